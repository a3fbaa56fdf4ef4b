"""The emulator's Resource Graph and Log Analytics handlers, called directly with request bodies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from remediate.azure.clients import AzureClients
from remediate.azure.inventory import load_query
from sim.fleet import OTHER_SUBSCRIPTION, SUBSCRIPTION, Fleet, demo_fleet, generated_fleet, make_vm
from sim.graph import QUERIES, QUERY_DIR, handle_resource_graph
from sim.logs import QUERY as LOGS_QUERY
from sim.logs import QUERY_VM as LOGS_QUERY_VM
from sim.logs import WORKSPACE_ID, handle_logs_query
from sim.server import Emulator

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
INVENTORY = load_query("windows_vms")
BY_NAME = load_query("vms_by_computer_name")
EVENTS = load_query("rdp_events")


def graph(
    fleet: Fleet, query: str, options: dict[str, Any] | None = None, subscriptions: list[str] | None = None
) -> tuple[int, Any]:
    body = {
        "subscriptions": subscriptions if subscriptions is not None else [SUBSCRIPTION],
        "query": query,
        "options": {"resultFormat": "objectArray", **(options or {})},
    }
    return handle_resource_graph(fleet, body)


def all_pages(fleet: Fleet, query: str, top: int) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    token = None
    requests = 0
    while True:
        status, answer = graph(fleet, query, {"$top": top, "$skipToken": token})
        requests += 1
        assert status == 200, answer
        assert answer["count"] == len(answer["data"])
        rows += answer["data"]
        token = answer.get("$skipToken")
        if not token:
            return rows, requests


def logs(fleet: Fleet, query: str = EVENTS, timespan: str | None = "PT86400.0S", **extra: Any) -> tuple[int, Any]:
    return handle_logs_query(fleet, WORKSPACE_ID, {"query": query, "timespan": timespan, **extra}, now=NOW)


@pytest.fixture
def fleet() -> Fleet:
    return demo_fleet(now=NOW)


# --- Resource Graph: recognising queries ---------------------------------------------------------------


def test_inventory_query_answers_windows_vms_with_state_name_and_ip(fleet: Fleet) -> None:
    status, answer = graph(fleet, INVENTORY)

    assert status == 200
    rows = {row["name"]: row for row in answer["data"]}
    assert "vm-linux" not in rows
    assert len(rows) == len(fleet) - 1 == answer["totalRecords"]
    expired = rows["vm-expired-certificate"]
    vm = fleet.by_scenario("expired-certificate")[0]
    assert expired["id"] == vm.resource_id
    assert expired["powerState"] == "PowerState/running"
    assert expired["osType"] == "Windows"
    assert expired["computerName"] == vm.guest.computer_name
    assert expired["privateIp"] == vm.private_ip
    assert rows["vm-deallocated"]["powerState"] == "PowerState/deallocated"
    assert rows["vm-opted-out"]["tags"] == {"rdp-remediate": "off"}
    assert answer["resultTruncated"] == "false"
    assert "$skipToken" not in answer


def test_the_shipped_file_text_with_comments_and_newlines_is_recognised(fleet: Fleet) -> None:
    raw = (QUERY_DIR / "windows_vms.kql").read_text(encoding="utf-8")
    assert "\n" in raw and "//" in raw

    assert graph(fleet, raw)[0] == 200
    assert graph(fleet, "  " + INVENTORY.replace(" | ", "\n|   ") + "\n")[0] == 200


@pytest.mark.parametrize(
    "query",
    [
        INVENTORY + " | take 5",
        INVENTORY.replace("=~ 'Windows'", "=~ 'Linux'"),
        INVENTORY.replace("order by id asc", "order by id desc"),
        "Resources | project id",
        BY_NAME,  # the template itself, placeholder unfilled
        BY_NAME.replace("{names}", "'vm1') or (1 == 1"),
        BY_NAME.replace("{names}", "'VM-1', 'x' or true"),
        BY_NAME.replace("{names}", "'ABCDEFGHIJKLMNOP'"),  # 16 characters: not a computer name
        EVENTS,  # a Log Analytics query is not a Resource Graph query
    ],
)
def test_any_other_query_is_rejected_with_invalid_query(fleet: Fleet, query: str) -> None:
    status, answer = graph(fleet, query)

    assert status == 400
    assert answer["error"]["code"] == "InvalidQuery"


def test_computer_name_query_matches_case_insensitively_in_requested_subscriptions() -> None:
    vms = [
        make_vm("healthy", 0, name="web01", now=NOW),
        make_vm("linux", 1, name="web02", now=NOW),
        make_vm("healthy", 2, name="web01", now=NOW, subscription_id=OTHER_SUBSCRIPTION),
        make_vm("healthy", 3, name="db01", now=NOW),
    ]
    fleet = Fleet(vms)

    status, answer = graph(fleet, BY_NAME.replace("{names}", "'Web01', 'web02', 'nosuch'"))

    assert status == 200
    assert sorted(row["id"] for row in answer["data"]) == sorted([vms[0].resource_id, vms[1].resource_id])
    assert {row["computerName"] for row in answer["data"]} == {"WEB01", "WEB02"}


def test_only_vms_of_the_requested_subscriptions_are_returned() -> None:
    fleet = Fleet(
        [
            make_vm("healthy", 0, now=NOW),
            make_vm("healthy", 1, now=NOW, subscription_id=OTHER_SUBSCRIPTION),
        ]
    )

    _, only_other = graph(fleet, INVENTORY, subscriptions=[OTHER_SUBSCRIPTION.upper()])
    _, both = graph(fleet, INVENTORY, subscriptions=[SUBSCRIPTION, OTHER_SUBSCRIPTION])

    assert [row["subscriptionId"] for row in only_other["data"]] == [OTHER_SUBSCRIPTION]
    assert both["totalRecords"] == 2


# --- Resource Graph: paging and request validation -----------------------------------------------------


def test_paging_over_2500_vms_returns_each_exactly_once() -> None:
    fleet = generated_fleet(2500, now=NOW)
    windows = sorted(vm.resource_id for vm in fleet if vm.os_type == "Windows")

    rows, requests = all_pages(fleet, INVENTORY, top=1000)

    assert sorted(row["id"] for row in rows) == windows
    assert len({row["id"] for row in rows}) == len(rows)
    assert requests == -(-len(windows) // 1000)


def test_a_skip_token_is_bound_to_its_query_and_cannot_be_forged() -> None:
    fleet = generated_fleet(30, now=NOW)
    _, first = graph(fleet, INVENTORY, {"$top": 10})
    token = first["$skipToken"]

    assert graph(fleet, INVENTORY, {"$skipToken": token})[0] == 200
    other_query = BY_NAME.replace("{names}", "'VM00001'")
    assert graph(fleet, other_query, {"$skipToken": token})[1]["error"]["code"] == "BadRequest"
    assert graph(fleet, INVENTORY, {"$skipToken": token}, [OTHER_SUBSCRIPTION])[0] == 400
    assert graph(fleet, INVENTORY, {"$skipToken": "not-a-token"})[0] == 400


def test_top_and_skip_override_the_token_as_documented() -> None:
    fleet = generated_fleet(30, mix="healthy", now=NOW)
    _, everything = graph(fleet, INVENTORY)
    _, first = graph(fleet, INVENTORY, {"$top": 10})

    _, second = graph(fleet, INVENTORY, {"$skipToken": first["$skipToken"], "$top": 5})
    _, skipped = graph(fleet, INVENTORY, {"$skip": 25})

    ids = [row["id"] for row in everything["data"]]
    assert [row["id"] for row in second["data"]] == ids[10:15]
    assert [row["id"] for row in skipped["data"]] == ids[25:]
    assert "$skipToken" not in skipped


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"subscriptions": [SUBSCRIPTION], "query": INVENTORY, "options": {"$top": 1001}}, "BadRequest"),
        ({"subscriptions": [SUBSCRIPTION], "query": INVENTORY, "options": {"$top": 0}}, "BadRequest"),
        ({"subscriptions": [SUBSCRIPTION], "query": INVENTORY, "options": {"$skip": -1}}, "BadRequest"),
        ({"subscriptions": [SUBSCRIPTION], "query": INVENTORY, "options": {"resultFormat": "table"}}, "BadRequest"),
        ({"subscriptions": ["not-a-guid"], "query": INVENTORY}, "InvalidRequestContent"),
        ({"subscriptions": [SUBSCRIPTION]}, "InvalidRequestContent"),
        ({"managementGroups": ["mg1"], "query": INVENTORY}, "BadRequest"),
    ],
)
def test_malformed_requests_are_refused(fleet: Fleet, body: dict[str, Any], code: str) -> None:
    status, answer = handle_resource_graph(fleet, body)

    assert status == 400
    assert answer["error"]["code"] == code


# --- Log Analytics -------------------------------------------------------------------------------------


def evidence(answer: dict[str, Any]) -> dict[str, set[int]]:
    table = answer["tables"][0]
    names = [column["name"] for column in table["columns"]]
    per_vm: dict[str, set[int]] = {}
    for row in table["rows"]:
        record = dict(zip(names, row, strict=True))
        per_vm.setdefault(record["_ResourceId"], set()).add(record["EventID"])
    return per_vm


def test_events_follow_the_fleet_scenarios(fleet: Fleet) -> None:
    status, answer = logs(fleet)

    assert status == 200
    assert answer["tables"][0]["name"] == "PrimaryResult"
    found = evidence(answer)

    def ids(scenario: str) -> set[int] | None:
        return found.get(fleet.by_scenario(scenario)[0].resource_id.lower())

    assert ids("expired-certificate") == {1058}
    assert ids("keystore-acl") == {1057, 36870}
    assert ids("keystore-corrupt") == {1057, 36870}
    assert ids("tls12-disabled") == {36871}
    assert ids("healthy") is None
    assert ids("firewall-closed") is None
    assert all(key == key.lower() for key in found)


def test_rows_are_summarised_per_resource_computer_and_event() -> None:
    vm = make_vm("expired-certificate", 0, now=NOW)
    vm.guest.events += [(1058, NOW - dt.timedelta(minutes=10)), (4624, NOW - dt.timedelta(minutes=5))]
    status, answer = logs(Fleet([vm]))

    assert status == 200
    columns = [column["name"] for column in answer["tables"][0]["columns"]]
    assert columns == ["_ResourceId", "Computer", "EventID", "Count", "LastSeen"]
    assert answer["tables"][0]["rows"] == [
        [vm.resource_id.lower(), vm.guest.computer_name, 1058, 2, "2025-03-01T11:50:00.0000001Z"]
    ]


def test_a_realistic_workspace_also_holds_machines_that_are_not_azure_vms_and_may_answer_partially() -> None:
    vm = make_vm("expired-certificate", 0, now=NOW)
    status, answer = handle_logs_query(
        Fleet([vm]),
        WORKSPACE_ID,
        {"query": load_query("rdp_events"), "timespan": "P1D"},
        now=NOW,
        partial_error=True,
        foreign_rows=True,
    )
    assert status == 200
    ids = [row[0] for row in answer["tables"][0]["rows"]]
    assert "" in ids and any("/microsoft.hybridcompute/machines/" in row_id for row_id in ids)
    assert answer["error"]["code"] == "PartialError"
    assert all(len(row[4].split(".")[1]) == 8 for row in answer["tables"][0]["rows"])  # 7 digits and the Z


@pytest.mark.parametrize(
    ("timespan", "expected"),
    [
        ("PT3600.0S", set()),  # the expired certificate's 1058 is two hours old
        ("PT10800.0S", {1058}),
        ("P1D", {1058}),
        ("2025-03-01T09:00:00.000Z/2025-03-01T10:30:00.000Z", {1058}),
        ("2025-03-01T10:30:00.000Z/PT1H", set()),
        ("PT3H/2025-03-01T12:00:00Z", {1058}),
        (None, {1058}),
    ],
)
def test_the_timespan_bounds_the_events(timespan: str | None, expected: set[int]) -> None:
    vm = make_vm("expired-certificate", 0, now=NOW)
    status, answer = logs(Fleet([vm]), timespan=timespan)

    assert status == 200
    assert evidence(answer).get(vm.resource_id.lower(), set()) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"query": EVENTS + " | take 1", "timespan": "PT1H"},
        {"query": EVENTS.replace("36871", "4625"), "timespan": "PT1H"},
        {"query": INVENTORY, "timespan": "PT1H"},
        {"query": "", "timespan": "PT1H"},
        {"query": EVENTS, "timespan": "yesterday"},
        {"query": EVENTS, "timespan": "2025-03-02T00:00:00Z/2025-03-01T00:00:00Z"},
        {"query": EVENTS, "timespan": "PT1H", "workspaces": ["another-workspace"]},
    ],
)
def test_bad_log_queries_are_refused_with_bad_argument(fleet: Fleet, body: dict[str, Any]) -> None:
    status, answer = handle_logs_query(fleet, WORKSPACE_ID, body, now=NOW)

    assert status == 400
    assert answer["error"]["code"] == "BadArgumentError"


def test_an_unknown_workspace_is_not_found(fleet: Fleet) -> None:
    status, answer = handle_logs_query(fleet, "99999999-2222-4333-8444-555555555555", {"query": EVENTS}, now=NOW)

    assert status == 404
    assert "99999999" in answer["error"]["message"]


def test_every_shipped_query_is_answered_by_one_emulator_handler() -> None:
    shipped = {path.stem for path in Path(QUERY_DIR).glob("*.kql")}

    assert shipped == set(QUERIES) | {LOGS_QUERY, LOGS_QUERY_VM}


# --- Through the real SDK clients and the HTTPS server -------------------------------------------------


def test_a_modified_query_sent_by_the_sdk_is_rejected_with_400(emulator: Emulator, azure_clients: AzureClients) -> None:
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

    client = azure_clients.resource_graph()
    options = QueryRequestOptions(top=5, result_format="objectArray")
    accepted = client.resources(QueryRequest(subscriptions=[SUBSCRIPTION], query=INVENTORY, options=options))
    with pytest.raises(HttpResponseError) as refused:
        client.resources(QueryRequest(subscriptions=[SUBSCRIPTION], query=INVENTORY + " | take 1", options=options))

    assert accepted.count == 5
    assert accepted.skip_token
    assert refused.value.status_code == 400
    assert refused.value.error is not None and refused.value.error.code == "InvalidQuery"
    assert [entry.status for entry in emulator.log.entries() if entry.operation == "resourceGraph"] == [200, 400]


def test_an_unknown_log_query_sent_by_the_sdk_is_rejected_with_400(
    emulator: Emulator, azure_clients: AzureClients
) -> None:
    from azure.core.exceptions import HttpResponseError

    client = azure_clients.logs()
    with pytest.raises(HttpResponseError) as refused:
        client.query_workspace(emulator.workspace_id, "Event | take 10", timespan=dt.timedelta(hours=1))

    assert refused.value.status_code == 400
    assert "BadArgumentError" in str(refused.value)
