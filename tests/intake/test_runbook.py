"""`POST /api/remediations`: VM ids or a selector in, 202 with request ids and status URLs out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediate.intake.requests import Selector
from remediate.intake.service import IntakeAnswer, RunbookIntake
from remediate.model import PermanentError, Plan, TransientError, Trigger, VmId
from tests.intake.support import SUBSCRIPTION, FailingSink, LedgerSink, encode, payload, settings, vm

SCALE_SET = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/s"


class FakeInventory:
    """Selector -> VMs, recording what it was asked."""

    def __init__(self, vms: list[VmId] | None = None, error: Exception | None = None) -> None:
        self.vms = vms or []
        self.error = error
        self.calls: list[Selector] = []

    def __call__(self, selector: Selector) -> list[VmId]:
        self.calls.append(selector)
        if self.error is not None:
            raise self.error
        return list(self.vms)


def submit(
    doc: Any, inventory: FakeInventory | None = None, caller: str | None = "ops@contoso.com", **env: str
) -> tuple[IntakeAnswer, LedgerSink]:
    sink = LedgerSink()
    body = doc if isinstance(doc, bytes) else encode(doc)
    return RunbookIntake(sink, settings(**env), inventory).handle(body, caller), sink


def refused(answer: IntakeAnswer, field: str, status: int = 400) -> str:
    assert answer.status == status, answer.body
    assert answer.body["error"]["field"] == field
    assert field in answer.body["error"]["message"]
    return str(answer.body["error"]["message"])


def test_vm_list_is_accepted_with_a_request_and_status_url_per_vm() -> None:
    answer, sink = submit(payload("runbook-vms.json"))

    assert answer.status == 202
    assert [VmId.parse(v) for v in answer.body["vms"]] == [vm("vm-web-01"), vm("vm-app-02")]
    assert answer.body["requestIds"] == [r.request_id for r in sink.requests]
    assert answer.body["statusUrls"] == [f"/api/remediations/{r.request_id}" for r in sink.requests]
    request = sink.requests[0]
    assert request.trigger is Trigger.RUNBOOK
    assert request.dedup_key is None
    assert request.reason == "runbook request by ops@contoso.com: users report error 0x904 on both hosts (INC0012345)"
    assert sink.claims == 0


def test_repeating_a_request_on_purpose_is_new_work_each_time() -> None:
    sink = LedgerSink()
    intake = RunbookIntake(sink, settings(), None)
    body = encode(payload("runbook-vms.json"))

    assert intake.handle(body, None).status == 202
    assert intake.handle(body, None).status == 202
    assert len(sink.requests) == 4


def test_duplicate_vms_in_one_body_collapse_whatever_their_case() -> None:
    doc = {"vms": [str(vm("vm-a")), str(vm("VM-A")).lower(), str(vm("vm-b")), str(vm("vm-a")) + "/"]}
    answer, sink = submit(doc)

    assert answer.status == 202
    assert [r.vm for r in sink.requests] == [vm("vm-a"), vm("vm-b")]


def test_options_are_carried_to_each_request() -> None:
    doc = {"vms": [str(vm("vm-a"))], "plan": "full", "dryRun": True, "diagnoseOnly": True, "force": True}
    _, sink = submit(doc)

    options = sink.requests[0].options
    assert (options.plan, options.dry_run, options.diagnose_only, options.force) == (Plan.FULL, True, True, True)


def test_global_dry_run_cannot_be_switched_off_by_a_caller() -> None:
    _, sink = submit({"vms": [str(vm("vm-a"))], "dryRun": False}, RDPR_DRY_RUN="true")

    assert sink.requests[0].options.dry_run is True


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("10.0.0.4", "is an IP address"),
        ("fe80::1%eth0", "is an IP address"),
        ("[2001:db8::7]", "is an IP address"),
        ("vm-web-01.corp.contoso.com", "is a host name"),
        ("VM-WEB-01", "is a host name"),
        (f"{SCALE_SET}/virtualMachines/3", "not yet supported"),
        (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st", "not a "),
        ("/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "GUID"),
    ],
)
def test_only_vm_resource_ids_are_accepted(entry: str, words: str) -> None:
    answer, sink = submit({"vms": [str(vm("vm-ok")), entry]})

    message = refused(answer, "vms[1]")
    assert words in message
    assert sink.requests == []


def test_host_names_and_addresses_are_told_what_to_send_instead() -> None:
    answer, _ = submit({"vms": ["10.1.2.3"]})

    assert "VM resource ids only" in refused(answer, "vms[0]")


def test_unknown_fields_are_all_named() -> None:
    answer, _ = submit({"vms": [str(vm("vm-a"))], "hosts": ["x"], "reboot": True})

    message = refused(answer, "hosts")
    assert "'reboot'" in message
    assert answer.body["error"]["code"] == "UnknownField"


def test_more_than_500_vms_is_refused() -> None:
    answer, _ = submit({"vms": [str(vm(f"vm-{i}")) for i in range(501)]})

    assert "at most 500" in refused(answer, "vms")


def test_exactly_500_vms_are_accepted() -> None:
    answer, sink = submit({"vms": [str(vm(f"vm-{i}")) for i in range(500)]})

    assert answer.status == 202
    assert len(sink.requests) == 500


CASES = [
    ({}, "vms"),
    ({"vms": []}, "vms"),
    ({"vms": "/subscriptions/x"}, "vms"),
    ({"vms": [7]}, "vms[0]"),
    ({"vms": ["/x"], "subscription": SUBSCRIPTION}, "vms"),
    ({"vms": [str(vm("a"))], "tag": "a=b"}, "tag"),
    ({"vms": [str(vm("a"))], "resourceGroup": "rg"}, "resourceGroup"),
    ({"vms": [str(vm("a"))], "plan": "renew-only"}, "plan"),
    ({"vms": [str(vm("a"))], "plan": 1}, "plan"),
    ({"vms": [str(vm("a"))], "dryRun": "true"}, "dryRun"),
    ({"vms": [str(vm("a"))], "diagnoseOnly": 1}, "diagnoseOnly"),
    ({"vms": [str(vm("a"))], "force": None}, "force"),
    ({"vms": [str(vm("a"))], "reason": 5}, "reason"),
    ({"vms": [str(vm("a"))], "reason": "x" * 501}, "reason"),
    ({"subscription": "prod"}, "subscription"),
    ({"subscription": 42}, "subscription"),
    ({"subscription": SUBSCRIPTION, "resourceGroup": "bad/name"}, "resourceGroup"),
    ({"subscription": SUBSCRIPTION, "tag": "=value"}, "tag"),
    ({"subscription": SUBSCRIPTION, "tag": ["a=b"]}, "tag"),
]


@pytest.mark.parametrize(("doc", "field"), CASES, ids=[f"{i}-{case[1]}" for i, case in enumerate(CASES)])
def test_invalid_body_is_a_400_naming_the_field(doc: dict[str, Any], field: str) -> None:
    answer, sink = submit(doc, FakeInventory([vm("a")]))

    refused(answer, field)
    assert sink.requests == []


def test_reason_of_exactly_500_characters_is_accepted() -> None:
    answer, _ = submit({"vms": [str(vm("a"))], "reason": "r" * 500})

    assert answer.status == 202


@pytest.mark.parametrize("body", [b"", b"[", b"\x00\x01", json.dumps([1]).encode(), b"null"])
def test_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    answer, _ = submit(body)

    refused(answer, "body")


def test_oversized_body_is_413() -> None:
    answer, _ = submit(b" " * (256 * 1024 + 1))

    refused(answer, "body", status=413)


def test_selector_is_expanded_through_the_inventory() -> None:
    inventory = FakeInventory([vm("web-1"), vm("web-2"), vm("WEB-1")])
    answer, sink = submit(payload("runbook-selector.json"), inventory)

    assert answer.status == 202
    assert inventory.calls == [Selector(SUBSCRIPTION, "rg-prod", "role", "web")]
    assert [r.vm for r in sink.requests] == [vm("web-1"), vm("web-2")]
    assert all(r.options.dry_run and r.options.plan is Plan.FULL for r in sink.requests)


def test_tag_name_alone_matches_any_value() -> None:
    inventory = FakeInventory([vm("a")])
    submit({"subscription": f"/subscriptions/{SUBSCRIPTION.upper()}", "tag": "rdp-pilot"}, inventory)

    assert inventory.calls == [Selector(SUBSCRIPTION, None, "rdp-pilot", None)]


def test_selector_matching_nothing_is_200_with_the_reason() -> None:
    answer, sink = submit(payload("runbook-selector.json"), FakeInventory([]))

    assert answer.status == 200
    assert answer.body["reason"] == f"no VM matches subscription {SUBSCRIPTION}, resource group rg-prod, tag role=web"
    assert sink.requests == []


def test_selector_outside_the_scope_is_403_and_the_inventory_is_not_asked() -> None:
    inventory = FakeInventory([vm("a")])
    other = "0d6c2b1a-9e8f-4a7b-b6c5-d4e3f2a1b0c9"
    answer, _ = submit({"subscription": other}, inventory)

    assert "outside the configured scope" in refused(answer, "subscription", status=403)
    assert inventory.calls == []


def test_selector_for_a_group_inside_a_scoped_group_is_in_scope() -> None:
    inventory = FakeInventory([vm("a")])
    answer, _ = submit(
        {"subscription": SUBSCRIPTION, "resourceGroup": "RG-Prod"},
        inventory,
        scopes=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-prod",
    )

    assert answer.status == 202


def test_selector_wider_than_a_scoped_group_is_passed_on_for_the_engine_to_filter() -> None:
    inventory = FakeInventory([vm("a")])
    answer, _ = submit(
        {"subscription": SUBSCRIPTION}, inventory, scopes=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-prod"
    )

    assert answer.status == 202


def test_selector_with_nothing_in_scope_is_403() -> None:
    answer, _ = submit({"subscription": SUBSCRIPTION}, FakeInventory([vm("a")]), scopes="")

    assert "RDPR_SCOPES is empty" in refused(answer, "subscription", status=403)


def test_selector_matching_more_than_500_vms_asks_to_narrow_it() -> None:
    answer, _ = submit(
        {"subscription": SUBSCRIPTION, "tag": "os=windows"}, FakeInventory([vm(f"v{i}") for i in range(501)])
    )

    assert "narrow it" in refused(answer, "tag")


def test_selector_without_an_inventory_is_refused_with_advice() -> None:
    answer, _ = submit({"subscription": SUBSCRIPTION}, None)

    assert "list the VMs in vms" in refused(answer, "subscription")


def test_inventory_outage_is_503() -> None:
    answer, _ = submit({"subscription": SUBSCRIPTION}, FakeInventory(error=TransientError("Resource Graph 503")))

    assert answer.status == 503
    assert answer.body["error"]["code"] == "ServiceUnavailable"


def test_inventory_refusal_is_400() -> None:
    answer, _ = submit({"subscription": SUBSCRIPTION}, FakeInventory(error=PermanentError("subscription not found")))

    assert "subscription not found" in refused(answer, "subscription")


def test_queue_outage_is_503() -> None:
    sink = FailingSink(ConnectionError("reset by peer"))
    answer = RunbookIntake(sink, settings(), None).handle(encode(payload("runbook-vms.json")), None)

    assert answer.status == 503
