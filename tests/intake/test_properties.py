"""Property-based tests: more than 10,000 generated alert and runbook bodies, none of which may break intake.

The bodies are mostly mutations of the valid samples (keys dropped, values swapped for junk of other types,
huge strings, unicode, nested junk, raw byte damage), because random JSON alone almost never gets past the
first check. For every body: no 5xx, no exception, and every 4xx names the field in its message.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediate.intake.requests import Selector
from remediate.intake.service import AlertIntake, IntakeAnswer, RunbookIntake
from remediate.model import VmId
from tests.intake import support

# Examples per test; together 10,500 bodies. derandomize keeps CI runs identical.
ALERT_MUTATIONS, ALERT_RAW, RUNBOOK_MUTATIONS, RUNBOOK_GENERATED = 5000, 1500, 2600, 1400
PROFILE: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
}
Path = tuple[str | int, ...]

ALERT_DOCS = [support.payload(name) for name in support.ALERT_FILES]
RUNBOOK_DOCS = [support.payload(name) for name in support.RUNBOOK_FILES]

# --- Generators ----------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", " ", "Fired", "Resolved", "null", "/", "/subscriptions/", "\u0000", "\ufeff", "🖥️", "Ω" * 3]),
    st.integers(min_value=1_000, max_value=120_000).map(lambda n: "x" * n),  # huge strings
    st.sampled_from([str(support.vm("vm-hypo")), str(support.vm("VM-HYPO")).lower()]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=8,
)


def paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every path to a value inside a decoded JSON document, the root excluded."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*prefix, key))
            found.extend(paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*prefix, index))
            found.extend(paths(child, (*prefix, index)))
    return found


def parent_of(doc: Any, path: Path) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


# Strategies are built once: building them inside each draw costs more than running intake.
ACTIONS = st.sampled_from(["drop", "replace", "insert", "wrap", "case"])
ROUNDS = st.integers(min_value=1, max_value=3)
KEYS = st.text(max_size=16)
ASCII_ONLY = st.booleans()


@st.composite
def mutated(draw: st.DrawFn, samples: list[dict[str, Any]]) -> bytes:
    doc = json.loads(json.dumps(samples[draw(st.integers(min_value=0, max_value=len(samples) - 1))]))
    for _ in range(draw(ROUNDS)):
        _mutate_once(draw, doc)
    return json.dumps(doc, ensure_ascii=draw(ASCII_ONLY)).encode("utf-8")


def _mutate_once(draw: st.DrawFn, doc: Any) -> None:
    candidates = paths(doc)
    if not candidates:
        return
    path = candidates[draw(st.integers(min_value=0, max_value=len(candidates) - 1))]
    action = draw(ACTIONS)
    parent, key = parent_of(doc, path), path[-1]
    if action == "drop":
        del parent[key]
    elif action == "replace":
        parent[key] = draw(junk)
    elif action == "insert" and isinstance(parent[key], dict):
        parent[key][draw(KEYS)] = draw(junk)
    elif action == "wrap":
        parent[key] = [parent[key]] if draw(ASCII_ONLY) else {"value": parent[key]}
    elif action == "case" and isinstance(parent[key], str):
        text = parent[key]
        parent[key] = draw(st.sampled_from([text.upper(), text.lower(), text + "é"]))


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    """A valid alert with bytes cut, inserted or flipped: exercises the JSON layer and its error path."""
    body = support.encode(draw(st.sampled_from(ALERT_DOCS)))
    start = draw(st.integers(min_value=0, max_value=len(body)))
    end = draw(st.integers(min_value=start, max_value=min(len(body), start + 40)))
    return body[:start] + draw(st.binary(max_size=12)) + body[end:]


runbook_values = st.one_of(
    scalars,
    st.dictionaries(st.text(max_size=8), scalars, max_size=3),
    st.lists(st.one_of(st.sampled_from([str(support.vm(f"vm-{i}")) for i in range(5)]), scalars), max_size=6),
    st.sampled_from([support.SUBSCRIPTION, "rg-prod", "role=web", "auto", "full", True, False]),
)
runbook_bodies = st.dictionaries(
    st.sampled_from(
        ["vms", "subscription", "resourceGroup", "tag", "plan", "dryRun", "diagnoseOnly", "force", "reason", "extra"]
    ),
    runbook_values,
    max_size=6,
).map(lambda doc: json.dumps(doc).encode("utf-8"))

# --- Invariants ----------------------------------------------------------------------------------------


def check_answer(answer: IntakeAnswer, ok_statuses: set[int]) -> None:
    assert answer.status < 500, answer.body
    json.dumps(answer.body)  # always serialisable
    if answer.status >= 400:
        error = answer.body["error"]
        assert set(answer.body) == {"error"}
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["field"], str)
        assert error["field"] in error["message"]
        return
    assert answer.status in ok_statuses
    for text in answer.body.get("vms", []):
        parsed = VmId.parse(text)
        assert "virtualmachinescalesets" not in parsed.key
    if answer.status == 202:
        assert len(answer.body["requestIds"]) == len(answer.body["statusUrls"]) == len(answer.body["vms"]) > 0


def alert_intake() -> AlertIntake:
    resolver = support.FakeResolver({"VM-FILE-04": [support.vm("vm-file-04")], "VM-WEB-01": [support.vm("vm-web-01")]})
    return AlertIntake(support.LedgerSink(), support.settings(), resolver)


def inventory(selector: Selector) -> list[VmId]:
    return [support.vm("vm-web-01"), support.vm("vm-web-02")]


def runbook_intake() -> RunbookIntake:
    return RunbookIntake(support.LedgerSink(), support.settings(), inventory)


# --- Properties ----------------------------------------------------------------------------------------


@settings(max_examples=ALERT_MUTATIONS, **PROFILE)
@given(mutated(ALERT_DOCS))
def test_mutated_alerts_never_break_intake(body: bytes) -> None:
    check_answer(alert_intake().handle(body), {200, 202})


@settings(max_examples=ALERT_RAW, **PROFILE)
@given(st.one_of(damaged_bytes(), junk.map(lambda doc: json.dumps(doc).encode("utf-8")), st.binary(max_size=64)))
def test_damaged_and_random_alert_bodies_never_break_intake(body: bytes) -> None:
    check_answer(alert_intake().handle(body), {200, 202})


@settings(max_examples=RUNBOOK_MUTATIONS, **PROFILE)
@given(mutated(RUNBOOK_DOCS))
def test_mutated_runbook_bodies_never_break_intake(body: bytes) -> None:
    check_answer(runbook_intake().handle(body, "ops"), {200, 202})


@settings(max_examples=RUNBOOK_GENERATED, **PROFILE)
@given(runbook_bodies)
def test_generated_runbook_bodies_never_break_intake(body: bytes) -> None:
    check_answer(runbook_intake().handle(body, None), {200, 202})
