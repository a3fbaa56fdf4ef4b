"""The report's undo advice comes from the scripts' own help (`.NOTES`, "Undo:"), with what each run recorded."""

from __future__ import annotations

from remediate.cli.report_html import undo_for
from remediate.guest.contract import SCRIPTS, undo_note


def test_every_script_that_changes_a_vm_says_how_to_undo_it() -> None:
    changing = [name for name in SCRIPTS if name != "diagnose"]
    assert changing and all(undo_note(name) for name in changing), {name: undo_note(name) for name in changing}
    assert undo_note("diagnose") is None  # reads only


def test_the_undo_of_a_renewal_names_the_key_it_set_aside() -> None:
    set_aside = r"C:\ProgramData\Microsoft\Crypto\RSA\MachineKeys\f686aace_x.20261129T120000Z.rdp-remediate.bak"
    step = {
        "name": "renew-certificate",
        "status": "ok",
        "summary": {
            "script": "renew-certificate",
            "changed": True,
            "findings": {"thumbprint": "AB" * 20, "removed": "AB" * 20, "set_aside": set_aside, "pinned": None},
        },
    }
    name, text = undo_for(step) or ("", "")
    assert name == "renew-certificate"
    assert text.startswith(str(undo_note("renew-certificate")))
    assert f"key set aside as {set_aside}" in text and f"removed {'AB' * 20}" in text
    assert "re-pinned" not in text  # nothing recorded, nothing said


def test_a_step_that_changed_nothing_has_no_undo_and_a_restart_has_nothing_to_undo() -> None:
    unchanged = {"name": "enable-tls12", "status": "ok", "summary": {"script": "enable-tls12", "changed": False}}
    assert undo_for(unchanged) is None
    assert undo_for({"name": "reboot", "status": "ok"}) == ("reboot", "a restart: nothing to undo")
