"""A fuzz campaign against every HTTP route, through the decorated Function handlers: 0 answers >= 500.

Each route gets at least 10,000 inputs: mutations of real payloads (every alert family, both runbook shapes)
with lone surrogates, invalid UTF-8, control characters, look-alike resource ids, duplicate keys, wrong types,
deep nesting and bodies over the 256 KB limit. The handlers are the real ones (function_app.py, the intakes,
their parsers); behind them, the ledger and queue are an in-memory stand-in that encodes every request and key
strictly, the way Table storage needs them, so text the product cannot store still fails where it would fail
in Azure (the bug this campaign first found: a lone surrogate in `alertId` made the hash raise, and the handler
answered 503, "try again", for ever). Azurite is not used here only to keep 30,000 calls within ~a minute; the
same classes of input go through Azurite in tests/functions/test_trust_input.py.

Hypothesis is derandomized, so a run is reproducible; each test counts its inputs to prove the campaign's size.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import remediate.intake.app as app_module
from remediate.intake.app import App
from remediate.intake.requests import Selector
from remediate.intake.service import AlertIntake, RunbookIntake
from remediate.model import RemediationRequest, VmId, valid_request_id
from remediate.settings import Settings
from sim.appservice import PLATFORM_SETTING, operator_headers
from tests.intake.support import ALERT_FILES, RUNBOOK_FILES, SUBSCRIPTION, payload

EXAMPLES = 10_000
SEEDS = [payload(name) for name in ALERT_FILES]
RUNBOOK_SEEDS = [payload(name) for name in RUNBOOK_FILES]
VM_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/vm-web-01"

# Text that has broken, or could break, storage, hashing, parsing or comparison.
NASTY = [
    "\ud800",
    "a\udfffb",
    "\udbff\udc00",  # a valid pair written as two code points
    "\x00",
    "\x01\x1f",
    "\u2028",
    "\ufffe",
    "\uffff",
    "\U0010ffff",
    "\u212a",
    "\u017f",
    "\u0131",
    "\u0130",
    "\u00df",
    "ﬀ",
    "\u0663",
    "'; drop table --",
    "%00",
    "../..",
    "a" * 5000,
    "",
    " ",
    "true",
    "null",
]
LOOK_ALIKES = [
    VM_ID.replace("providers", "provider\u017f"),
    VM_ID.replace("Microsoft", "M\u0131crosoft"),
    VM_ID.replace("virtualMachines", "v\u0131rtualMachines"),
    VM_ID.replace("rg-prod", "rg-prod\u212a"),
    VM_ID.replace("rg-prod", "RG-PRO\u0110"),
    VM_ID.replace("vm-web-01", "vm-web-0\u0661"),
    VM_ID.replace(SUBSCRIPTION[:4], "\uff13f9b"),
    VM_ID.lower(),
    VM_ID.upper(),
    VM_ID + "/extensions/x",
    VM_ID.replace("virtualMachines", "virtualMachineScaleSets") + "/virtualMachines/0",
    "/subscriptions/" + SUBSCRIPTION,
    "10.0.0.4",
    "vm-web-01.contoso.com",
]


def _text(rng: random.Random) -> str:
    """Short text from anywhere in Unicode, lone surrogates and controls included, often mostly ASCII."""
    size = rng.choice([0, 1, 3, 12, 40])
    wide = rng.random() < 0.5
    return "".join(
        chr(rng.randrange(0, 0x110000) if wide and rng.random() < 0.3 else rng.randrange(32, 127)) for _ in range(size)
    )


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 2**63, 2**70, 1e308, -0.0, 3.5])
    if kind in (3, 4):
        return rng.choice(NASTY + LOOK_ALIKES)
    if kind in (5, 6):
        return _text(rng)
    if kind == 7:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


class StrictSink:
    """The ledger and queue as far as text goes: every key hashed and every message encoded strictly."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def claim(self, dedup_key: str) -> bool:
        digest = hashlib.sha256(dedup_key.encode()).hexdigest()
        if digest in self.keys:
            return False
        self.keys.add(digest)
        return True

    def unclaim(self, dedup_key: str) -> None:
        self.keys.discard(hashlib.sha256(dedup_key.encode()).hexdigest())

    def enqueue(self, request: RemediationRequest) -> None:
        json.dumps(request.to_message(), ensure_ascii=False).encode("utf-8")
        request.reason.encode("utf-8")

    def admit(self, request: RemediationRequest, pending_for: dt.timedelta) -> str | None:
        del pending_for
        request.vm.key.encode("utf-8")
        return None

    def release(self, request: RemediationRequest) -> None:
        del request

    def vm_state(self, vm: VmId) -> None:
        vm.key.encode("utf-8")


class NoLedger:
    def get(self, request_id: str) -> None:
        request_id.encode("utf-8")


def _resolver(computers: list[str], scopes: tuple[str, ...]) -> dict[str, list[VmId]]:
    return {name: [VmId.parse(VM_ID)] if name.lower().startswith("vm") else [] for name in computers}


def _expand(selector: Selector) -> list[VmId]:
    return [VmId.parse(VM_ID)]


@pytest.fixture(scope="module")
def handlers() -> Iterator[ModuleType]:
    import function_app

    current = App(Settings.from_env({"RDPR_SCOPES": f"/subscriptions/{SUBSCRIPTION}"}))
    sink = StrictSink()
    current.__dict__["alerts"] = AlertIntake(sink, current.settings, _resolver)
    current.__dict__["runbook"] = RunbookIntake(sink, current.settings, _expand)
    current.__dict__["ledger"] = NoLedger()
    previous, app_module._app = app_module._app, current
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(*PLATFORM_SETTING)  # App Service authentication is on: the operator's principal is real
        yield function_app
    app_module._app = previous


# --- Mutations -----------------------------------------------------------------------------------------


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, item in doc.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(doc, list):
        for index, item in enumerate(doc):
            found += _paths(item, (*prefix, index))
    return found


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


HOT = frozenset(
    {
        "alertId",
        "alertRule",
        "alertTargetIDs",
        "monitorCondition",
        "signalType",
        "dimensions",
        "Dimensions",
        "value",
        "vms",
        "reason",
        "tag",
        "resourceGroup",
        "subscription",
        "dryRun",
        "plan",
    }
)
SHAPES = ["as-is", "duplicate", "nest", "big", "bytes", "truncate"]


@st.composite
def bodies(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> bytes:
    """A real payload, changed at up to three places, then perhaps broken as text or as bytes.

    Hypothesis draws the seed payload, the shape and one random seed; the details come from that seed, so
    each input costs a handful of draws and 10,000 of them fit in seconds (reproducible: derandomized).
    """
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    shape = draw(st.sampled_from(SHAPES))
    rng = random.Random(draw(st.integers(0, 2**64 - 1)))
    for _ in range(rng.randrange(4)):
        paths = _paths(doc)
        hot = [path for path in paths if any(step in HOT for step in path[-2:])]
        # Half the changes go where the product reads (ids, targets, dimensions, flags), half anywhere.
        doc = _replace(doc, rng.choice(hot if hot and rng.random() < 0.5 else paths), _value(rng))
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    if shape == "duplicate" and isinstance(doc, dict) and doc:
        key = rng.choice(sorted(doc))
        text = text[:-1] + f", {json.dumps(key)}: {json.dumps(_value(rng))}}}"
    elif shape == "nest":
        depth = rng.choice([10, 1000, 5000, 100_000])
        nested = "[" * depth + "]" * depth
        text = text.replace("null", nested, 1) if "null" in text else nested
    elif shape == "big":
        text = text[:-1] + ', "padding": "' + "x" * rng.choice([200_000, 300_000]) + '"}'
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8 here
    if shape == "bytes":
        at = rng.randrange(len(data) + 1)
        data = data[:at] + rng.randbytes(rng.randrange(1, 9)) + data[at:]
    elif shape == "truncate":
        data = data[: rng.randrange(len(data) + 1)]
    return data


def _check(response: func.HttpResponse) -> None:
    assert response.status_code < 500, (response.status_code, response.get_body()[:300])
    document = json.loads(response.get_body())
    if response.status_code >= 400:
        error = document["error"]
        assert error["field"] and error["field"] in error["message"], error


def _post(module: ModuleType, route: str, data: bytes) -> func.HttpResponse:
    handler = module.alerts if route == "alerts" else module.remediations
    headers = {} if route == "alerts" else operator_headers()  # past App Service authentication: the body is tried
    request = func.HttpRequest(
        "POST", f"https://localhost/api/{route}", headers=headers, params={}, route_params={}, body=data
    )
    response: func.HttpResponse = handler(request)
    return response


CAMPAIGN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _campaign(handlers: ModuleType, route: str, seeds: list[dict[str, Any]]) -> None:
    calls = Counter[int]()

    @CAMPAIGN
    @given(data=bodies(seeds))
    def run(data: bytes) -> None:
        calls[len(data) > 256 * 1024] += 1
        _check(_post(handlers, route, data))

    run()
    assert calls.total() >= EXAMPLES and calls[True] > 0, calls  # full size, with oversized bodies among them


def test_alerts_route(handlers: ModuleType) -> None:
    _campaign(handlers, "alerts", SEEDS)


def test_remediations_route(handlers: ModuleType) -> None:
    _campaign(handlers, "remediations", RUNBOOK_SEEDS)


@st.composite
def request_ids(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["id", "nasty", "text", "digits", "long"]))
    rng = random.Random(draw(st.integers(0, 2**64 - 1)))
    if kind == "id":
        return rng.randbytes(16).hex()
    if kind == "nasty":
        return rng.choice(NASTY + LOOK_ALIKES)
    if kind == "digits":  # letters and digits by str.isalnum(), from other scripts
        return "".join(rng.choice("0a\u0661\u0663\uff13\u00b2\u2167\u212a\u0131") for _ in range(rng.randrange(1, 40)))
    if kind == "long":
        return "a" * rng.choice([64, 65, 1000])
    return _text(rng)


def test_status_route(handlers: ModuleType) -> None:
    calls: list[str] = []

    @CAMPAIGN
    @given(request_id=request_ids())
    def run(request_id: str) -> None:
        calls.append(request_id)
        request = func.HttpRequest(
            "GET",
            "https://localhost/api/remediations/x",
            headers=operator_headers(),
            params={},
            route_params={"request_id": request_id},
            body=b"",
        )
        response: func.HttpResponse = handlers.remediation_status(request)
        _check(response)
        assert (response.status_code == 404) is valid_request_id(request_id)

    run()
    assert len(calls) >= EXAMPLES
    assert any(not valid_request_id(text) for text in calls) and any(valid_request_id(text) for text in calls)
