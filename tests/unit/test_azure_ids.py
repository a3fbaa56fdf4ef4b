"""Resource ids, scopes and tags compare as Azure compares them: ordinal ignore-case, no Unicode folding.

Python's `lower()` maps U+212A KELVIN SIGN to `k` and `casefold()` maps `ß` to `ss`; Azure's .NET comparison
does neither. Each look-alike below, put into each segment of an in-scope VM id, must either be refused by the
parser or name a different VM that is outside the scope.
"""

from __future__ import annotations

from typing import Any

import pytest

from remediate.azure.inventory import computer_host_label
from remediate.engine import policy
from remediate.model import InvalidResourceId, VmId, azure_equal, azure_key, valid_subscription_id
from remediate.settings import Settings

SUB = "3f9b1c2e-7a4d-4e8b-9c61-2d5e8f0a4b17"
GROUP = "rg-kiosk-s"
NAME = "vm-kiosk01"
ID = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/{NAME}"
SCOPE = f"/subscriptions/{SUB}/resourceGroups/{GROUP}"

# (ASCII letter, a character Python's lower()/upper()/casefold() or re.IGNORECASE equate with it, name)
LOOK_ALIKES = [
    ("k", "\u212a", "KELVIN SIGN"),
    ("K", "\u212a", "KELVIN SIGN for K"),
    ("s", "\u017f", "LATIN SMALL LETTER LONG S"),
    ("S", "\u017f", "LONG S for S"),
    ("i", "\u0131", "LATIN SMALL LETTER DOTLESS I"),
    ("I", "\u0130", "LATIN CAPITAL LETTER I WITH DOT ABOVE"),
    ("i", "\u0130", "DOTTED CAPITAL I for i"),
    ("I", "\u0131", "DOTLESS I for I"),
    ("a", "\u212b", "ANGSTROM SIGN (lower() gives a-ring, not a)"),
]
SEGMENTS = ["subscriptions", "resourceGroups", GROUP, "providers", "Microsoft.Compute", "virtualMachines", NAME]


def _variants() -> list[tuple[str, str]]:
    found = []
    for segment in SEGMENTS:
        for letter, twin, label in LOOK_ALIKES:
            if letter in segment:
                changed = segment.replace(letter, twin, 1)
                found.append((ID.replace(f"/{segment}", f"/{changed}", 1), f"{segment}: {label}"))
    # The subscription: digits and hex letters from other scripts (`\\d` and `\\w` would take them).
    for twin, label in (("\u0663", "ARABIC-INDIC DIGIT THREE"), ("\uff13", "FULLWIDTH DIGIT THREE")):
        found.append((ID.replace("3f9b", twin + "f9b", 1), f"{SUB}: {label}"))
    found.append((ID.replace("3f9b", "3\uff46" + "9b", 1), f"{SUB}: FULLWIDTH LATIN SMALL LETTER F"))
    # ß where the id has ss, and the reverse: Unicode folding equates them, Azure does not.
    found.append((ID.replace("kiosk-s", "kiosk-\u00df"), "group: sharp s"))
    return found


VARIANTS = _variants()


def test_the_table_covers_every_segment() -> None:
    covered = {label.split(":")[0] for _, label in VARIANTS}
    assert covered >= {*SEGMENTS, SUB}
    assert len(VARIANTS) >= 25


@pytest.mark.parametrize(("text", "label"), VARIANTS, ids=[label for _, label in VARIANTS])
def test_a_look_alike_id_is_refused_or_out_of_scope(text: str, label: str) -> None:
    settings = Settings.from_env({"RDPR_SCOPES": SCOPE})
    original = VmId.parse(ID)
    try:
        parsed = VmId.parse(text)
    except InvalidResourceId:
        return  # refused: the fixed segments, the subscription and the VM name are ASCII only
    assert "/resourceGroups/" in text, label  # only the group allows Unicode letters
    assert parsed != original and parsed.key != original.key, label
    assert policy.scope_refusal(settings, parsed) is not None, label
    assert policy.scope_refusal(settings, original) is None


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        ("rg-Kiosk", "RG-kIOSK", True),  # ASCII: case-insensitive, as ARM is
        ("\u00c5sa", "\u00e5SA", True),  # a one-to-one Unicode case pair is still one name
        ("\u212a", "k", False),
        ("\u212a", "K", False),
        ("stra\u00dfe", "strasse", False),
        ("stra\u00dfe", "STRASSE", False),
        ("\u1e9e", "\u00df", False),  # capital sharp s lower-cases to ß, but ß upper-cases to SS: no pair
        ("\u0131", "i", False),
        ("\u0131", "I", False),
        ("\u0130", "i", False),
        ("\u0130", "I", False),
        ("\u017f", "s", False),
        ("\u212b", "\u00e5", False),
        ("\u03c2", "\u03c3", False),  # final sigma: kept apart (stricter than Azure, never looser)
    ],
)
def test_azure_comparison(left: str, right: str, equal: bool) -> None:
    assert azure_equal(left, right) is equal
    assert (azure_key(left) == azure_key(right)) is equal


def test_ascii_keys_are_unchanged_so_existing_ledger_rows_still_match() -> None:
    assert VmId.parse(ID).key == ID.lower()


@pytest.mark.parametrize(
    ("tags", "opted_out"),
    [
        ({"RDP-Remediate": "OFF"}, True),  # ASCII case: Azure tag names are case-insensitive
        ({"rdp-remediate": "o\u0192\u0192"}, False),
        ({"rdp-remediate": "\u212aoff"}, False),
        ({"rdp-remed\u0131ate": "off"}, False),  # a dotless i: a different tag to Azure
    ],
)
def test_opt_out_tag_follows_the_same_rule(tags: dict[str, str], opted_out: bool) -> None:
    settings = Settings.from_env({"RDPR_SCOPES": SCOPE})
    assert (policy._tag_refusal(settings, tags) is not None) is opted_out


def test_opt_in_is_not_granted_by_a_look_alike_tag_name() -> None:
    settings = Settings.from_env(
        {"RDPR_SCOPES": SCOPE, "RDPR_REQUIRE_OPT_IN": "true", "RDPR_OPT_IN_TAG": "rdp-remediate-ok=yes"}
    )
    assert policy._tag_refusal(settings, {"RDP-REMEDIATE-OK": "YES"}) is None
    assert policy._tag_refusal(settings, {"rdp-remediate-o\u212a": "yes"}) is not None


@pytest.mark.parametrize(
    "check",
    [
        lambda: valid_subscription_id("00000000-0000-4000-8000-000000000001\n"),
        lambda: computer_host_label("vm1\n") is not None,
        lambda: computer_host_label("vm1.corp\n") is not None,
    ],
)
def test_a_final_newline_never_passes_a_pattern(check: Any) -> None:
    assert not check()


def test_a_vm_name_with_a_final_newline_inside_the_id_is_refused() -> None:
    sub = "00000000-0000-4000-8000-000000000001"
    with pytest.raises(InvalidResourceId):
        VmId.parse(f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1\n/")
    with pytest.raises(InvalidResourceId):
        VmId.parse(f"/subscriptions/{sub}\n/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1")
