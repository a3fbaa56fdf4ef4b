"""What the alert endpoint refuses, and how it says so: 413 by size, 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediate.intake.service import AlertIntake, IntakeAnswer
from tests.intake.support import LedgerSink, encode, payload, settings, sized_alert

LIMIT = 256 * 1024


def handle(body: bytes) -> tuple[IntakeAnswer, LedgerSink]:
    sink = LedgerSink()
    return AlertIntake(sink, settings(), None).handle(body), sink


def assert_refused(answer: IntakeAnswer, status: int, field: str, code: str | None = None) -> str:
    assert answer.status == status
    error = answer.body["error"]
    assert set(answer.body) == {"error"}
    assert error["field"] == field
    assert field in error["message"]
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


def test_payload_of_exactly_256_kb_is_handled() -> None:
    body = sized_alert(LIMIT)
    answer, sink = handle(body)

    assert len(body) == LIMIT
    assert answer.status == 202
    assert len(sink.requests) == 10  # ten VMs cycle through the embedded rows


def test_payload_one_byte_over_256_kb_is_refused_with_413() -> None:
    answer, sink = handle(sized_alert(LIMIT + 1))

    message = assert_refused(answer, 413, "body", "PayloadTooLarge")
    assert "262145 bytes" in message
    assert sink.requests == []


def test_size_is_checked_before_parsing() -> None:
    # Not even JSON: the size alone decides, so an oversized body costs no parse.
    answer, _ = handle(b"{" * (LIMIT + 1))

    assert_refused(answer, 413, "body", "PayloadTooLarge")


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b"{", b"not json", b'{"schemaId": }', b"\xff\xfe\x00garbage", b"[" * 100_000, b"{'single': 1}"],
)
def test_malformed_json_is_a_400_about_the_body(body: bytes) -> None:
    answer, _ = handle(body)

    assert_refused(answer, 400, "body", "MalformedJson")


@pytest.mark.parametrize("doc", [[], "alert", 42, None, True])
def test_top_level_must_be_an_object(doc: Any) -> None:
    answer, _ = handle(json.dumps(doc).encode())

    assert_refused(answer, 400, "body", "WrongType")


def test_missing_schema_id_points_at_the_action_group_setting() -> None:
    doc = payload("metric-vm.json")
    del doc["schemaId"]
    answer, _ = handle(encode(doc))

    message = assert_refused(answer, 400, "schemaId", "NotCommonAlertSchema")
    assert "useCommonAlertSchema" in message


def test_other_schema_is_refused() -> None:
    doc = payload("metric-vm.json")
    doc["schemaId"] = "Microsoft.Insights/activityLogs"
    answer, _ = handle(encode(doc))

    assert_refused(answer, 400, "schemaId", "NotCommonAlertSchema")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("data",), "data"),
        (("data", "essentials"), "data.essentials"),
        (("data", "essentials", "alertId"), "data.essentials.alertId"),
        (("data", "essentials", "monitorCondition"), "data.essentials.monitorCondition"),
    ],
)
def test_missing_required_field_is_named(path: tuple[str, ...], field: str) -> None:
    doc = payload("metric-vm.json")
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    answer, _ = handle(encode(doc))

    message = assert_refused(answer, 400, field, "MissingField")
    assert "missing" in message


WRONG_TYPES = [
    (("data",), [], "data"),
    (("data", "essentials"), "x", "data.essentials"),
    (("data", "essentials", "alertId"), 17, "data.essentials.alertId"),
    (("data", "essentials", "alertId"), "  ", "data.essentials.alertId"),
    (("data", "essentials", "monitorCondition"), True, "data.essentials.monitorCondition"),
    (("data", "essentials", "monitorCondition"), "Acknowledged", "data.essentials.monitorCondition"),
    (("data", "essentials", "alertRule"), {"name": "x"}, "data.essentials.alertRule"),
    (("data", "essentials", "signalType"), 3, "data.essentials.signalType"),
    (("data", "essentials", "monitoringService"), [], "data.essentials.monitoringService"),
    (("data", "essentials", "alertTargetIDs"), "/subscriptions/x", "data.essentials.alertTargetIDs"),
    (("data", "essentials", "alertTargetIDs", 0), 5, "data.essentials.alertTargetIDs[0]"),
    (("data", "alertContext"), "context", "data.alertContext"),
    (("data", "alertContext", "condition"), 1, "data.alertContext.condition"),
    (("data", "alertContext", "condition", "allOf"), {}, "data.alertContext.condition.allOf"),
    (("data", "alertContext", "condition", "allOf", 0), "x", "data.alertContext.condition.allOf[0]"),
    (
        ("data", "alertContext", "condition", "allOf", 0, "dimensions"),
        "Computer",
        "data.alertContext.condition.allOf[0].dimensions",
    ),
    (
        ("data", "alertContext", "condition", "allOf", 0, "dimensions", 0),
        ["_ResourceId"],
        "data.alertContext.condition.allOf[0].dimensions[0]",
    ),
    (
        ("data", "alertContext", "condition", "allOf", 0, "dimensions", 0, "name"),
        None,
        "data.alertContext.condition.allOf[0].dimensions[0].name",
    ),
    (
        ("data", "alertContext", "condition", "allOf", 0, "dimensions", 0, "value"),
        {"id": 1},
        "data.alertContext.condition.allOf[0].dimensions[0].value",
    ),
]


@pytest.mark.parametrize(("path", "value", "field"), WRONG_TYPES, ids=[case[2] for case in WRONG_TYPES])
def test_wrong_type_is_a_400_naming_the_field(path: tuple[str | int, ...], value: Any, field: str) -> None:
    doc = payload("log-v2-workspace-resourceid.json")
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    answer, sink = handle(encode(doc))

    assert_refused(answer, 400, field)
    assert sink.requests == []


OLDER_LOG_WRONG_TYPES = [
    (("Dimensions",), "Computer", "data.alertContext.Dimensions"),
    (("Dimensions", 0, "value"), [1], "data.alertContext.Dimensions[0].value"),
    (("AffectedConfigurationItems",), "VM-WEB-01", "data.alertContext.AffectedConfigurationItems"),
    (("SearchResults",), [], "data.alertContext.SearchResults"),
    (("SearchResults", "tables"), {}, "data.alertContext.SearchResults.tables"),
    (
        ("SearchResults", "tables", 0, "columns", 1, "name"),
        7,
        "data.alertContext.SearchResults.tables[0].columns[1].name",
    ),
    (("SearchResults", "tables", 0, "rows", 0), "row", "data.alertContext.SearchResults.tables[0].rows[0]"),
]


@pytest.mark.parametrize(
    ("path", "value", "field"), OLDER_LOG_WRONG_TYPES, ids=[case[2] for case in OLDER_LOG_WRONG_TYPES]
)
def test_wrong_type_in_an_older_log_alert_is_named(path: tuple[str | int, ...], value: Any, field: str) -> None:
    doc = payload("log-v1-dimensions.json" if path[0] == "Dimensions" else "log-v1-search-results.json")
    parent: Any = doc["data"]["alertContext"]
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    answer, _ = handle(encode(doc))

    assert_refused(answer, 400, field)


def test_resolved_alert_is_not_refused_for_context_details_it_never_needs() -> None:
    doc = payload("resolved.json")
    doc["data"]["alertContext"]["condition"]["allOf"] = "not a list"
    answer, _ = handle(encode(doc))

    assert answer.status == 200


def test_unknown_fields_and_odd_types_outside_what_we_read_are_tolerated() -> None:
    # Service health sends numbers where other activity log alerts send strings; future fields appear.
    doc = payload("metric-vm.json")
    doc["data"]["essentials"]["configurationItems"] = {"unexpected": True}
    doc["data"]["essentials"]["investigationLink"] = "https://portal.azure.com/#view/x"
    doc["data"]["alertContext"]["channels"] = 1
    doc["data"]["customProperties"] = {"team": ["windows"]}
    answer, _ = handle(encode(doc))

    assert answer.status == 202


def test_monitor_condition_is_matched_without_regard_to_case() -> None:
    doc = payload("metric-vm.json")
    doc["data"]["essentials"]["monitorCondition"] = "fired"
    answer, _ = handle(encode(doc))

    assert answer.status == 202
