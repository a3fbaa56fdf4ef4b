"""Every documented alert family, as an action group delivers it, through `AlertIntake`."""

from __future__ import annotations

from typing import Any

import pytest

from remediate.intake.alerts import SCALE_SET_REASON, Family, parse_alert
from remediate.intake.service import AlertIntake, IntakeAnswer
from remediate.model import Plan, Trigger, VmId
from tests.intake.support import (
    FakeResolver,
    LedgerSink,
    encode,
    payload,
    settings,
    vm,
)


def deliver(doc: dict[str, Any], resolver: FakeResolver | None = None, **env: str) -> tuple[IntakeAnswer, LedgerSink]:
    sink = LedgerSink()
    answer = AlertIntake(sink, settings(**env), resolver).handle(encode(doc))
    return answer, sink


def accepted_vms(answer: IntakeAnswer) -> list[VmId]:
    return [VmId.parse(text) for text in answer.body["vms"]]


@pytest.mark.parametrize(
    ("name", "family", "expected"),
    [
        ("metric-vm.json", Family.METRIC, ["vm-web-01"]),
        ("log-v2-vm.json", Family.LOG_V2, ["vm-app-02"]),
        ("log-v2-workspace-resourceid.json", Family.LOG_V2, ["vm-db-03"]),
        ("log-v1-search-results.json", Family.LOG_V1, ["vm-web-01", "vm-app-02"]),
        ("activity-log-administrative.json", Family.ACTIVITY_LOG, ["vm-web-01"]),
        ("resource-health.json", Family.RESOURCE_HEALTH, ["vm-app-02"]),
    ],
)
def test_alert_naming_vms_is_accepted_with_one_request_per_vm(name: str, family: Family, expected: list[str]) -> None:
    doc = payload(name)
    resolver = FakeResolver()
    answer, sink = deliver(doc, resolver)

    assert answer.status == 202
    assert accepted_vms(answer) == [vm(n) for n in expected]
    assert [r.vm for r in sink.requests] == [vm(n) for n in expected]
    assert answer.body["requestIds"] == [r.request_id for r in sink.requests]
    assert answer.body["statusUrls"] == [f"/api/remediations/{r.request_id}" for r in sink.requests]
    assert answer.body["ignored"] == answer.body["unresolved"] == answer.body["duplicates"] == []
    # These families name the VM directly: no name lookup is needed, so none is made.
    assert resolver.calls == []
    assert parse_alert(encode(doc)).family is family
    alert_id = doc["data"]["essentials"]["alertId"]
    for request in sink.requests:
        assert request.trigger is Trigger.ALERT
        assert request.dedup_key == f"alert:{alert_id}:{request.vm.key}"
        assert request.options.plan is Plan.AUTO
        assert doc["data"]["essentials"]["alertRule"] in request.reason


def test_lower_cased_target_ids_become_the_same_vm_as_the_canonical_spelling() -> None:
    _, sink = deliver(payload("metric-vm.json"))

    target = payload("metric-vm.json")["data"]["essentials"]["alertTargetIDs"][0]
    assert target == target.lower()
    assert sink.requests[0].vm == vm("VM-WEB-01", group="RG-PROD")
    assert sink.requests[0].vm.key == target


def test_workspace_alert_with_computer_dimension_is_resolved_within_the_scopes() -> None:
    resolver = FakeResolver({"VM-FILE-04": [vm("vm-file-04")]})
    answer, sink = deliver(payload("log-v2-workspace-computer.json"), resolver)

    assert answer.status == 202
    assert accepted_vms(answer) == [vm("vm-file-04")]
    # The FQDN of a domain-joined machine is looked up by its computer name, among every VM visible (no
    # scopes): the scope is applied to what comes back.
    assert resolver.calls == [(["VM-FILE-04"], ())]
    assert "Computer dimension 'VM-FILE-04.corp.contoso.com'" in sink.requests[0].reason


def test_workspace_alert_prefers_the_resource_id_dimension_over_the_computer_name() -> None:
    resolver = FakeResolver({"VM-DB-03": [vm("some-other-vm")]})
    answer, _ = deliver(payload("log-v2-workspace-resourceid.json"), resolver)

    assert accepted_vms(answer) == [vm("vm-db-03")]
    assert resolver.calls == []


def test_computer_name_nobody_has_is_listed_as_unresolved() -> None:
    answer, sink = deliver(payload("log-v2-workspace-computer.json"), FakeResolver({}))

    assert answer.status == 200
    assert sink.requests == []
    assert answer.body["unresolved"] == [
        {"computer": "VM-FILE-04.corp.contoso.com", "reason": "no VM visible to this identity has this computer name"}
    ]
    assert "computer name" in answer.body["reason"]


def test_computer_name_shared_by_two_vms_is_not_guessed() -> None:
    resolver = FakeResolver({"VM-FILE-04": [vm("vm-file-04"), vm("vm-file-04", group="rg-dr")]})
    answer, sink = deliver(payload("log-v2-workspace-computer.json"), resolver)

    assert answer.status == 200
    assert sink.requests == []
    assert "2 VMs have this computer name (2 in scope)" in answer.body["unresolved"][0]["reason"]


def test_a_computer_name_an_out_of_scope_vm_shares_is_not_applied_to_the_in_scope_one() -> None:
    outside = vm("vm-file-04", subscription="0a0a0a0a-0000-4000-8000-000000000009")
    resolver = FakeResolver({"VM-FILE-04": [vm("vm-file-04"), outside]})
    answer, sink = deliver(payload("log-v2-workspace-computer.json"), resolver)

    assert answer.status == 200 and sink.requests == []
    assert "2 VMs have this computer name (1 in scope); not guessing" in answer.body["unresolved"][0]["reason"]


def test_a_computer_name_only_an_out_of_scope_vm_has_is_unresolved_with_that_reason() -> None:
    outside = vm("vm-file-04", subscription="0a0a0a0a-0000-4000-8000-000000000009")
    answer, sink = deliver(payload("log-v2-workspace-computer.json"), FakeResolver({"VM-FILE-04": [outside]}))

    assert answer.status == 200 and sink.requests == []
    assert "outside the configured scope" in answer.body["unresolved"][0]["reason"]


def test_without_a_resolver_computer_names_stay_unresolved_and_nothing_is_called() -> None:
    answer, sink = deliver(payload("log-v2-workspace-computer.json"), None)

    assert answer.status == 200
    assert sink.requests == []
    assert answer.body["unresolved"][0]["computer"] == "VM-FILE-04.corp.contoso.com"
    assert "offline" in answer.body["unresolved"][0]["reason"]


def test_with_no_scope_configured_the_resolver_is_not_asked() -> None:
    resolver = FakeResolver({"VM-FILE-04": [vm("vm-file-04")]})
    answer, _ = deliver(payload("log-v2-workspace-computer.json"), resolver, scopes="")

    assert resolver.calls == []
    assert "RDPR_SCOPES is empty" in answer.body["unresolved"][0]["reason"]


def test_computer_values_that_are_not_windows_names_never_reach_the_resolver() -> None:
    doc = payload("log-v2-workspace-computer.json")
    dims = doc["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"]
    dims[0]["value"] = "x' or 1==1 //"
    resolver = FakeResolver()
    answer, _ = deliver(doc, resolver)

    assert resolver.calls == []
    assert answer.body["unresolved"] == [{"computer": "x' or 1==1 //", "reason": "not a Windows computer name"}]


def test_older_log_alert_resolves_its_pascal_case_computer_dimension() -> None:
    resolver = FakeResolver({"VM-WEB-01": [vm("vm-web-01")]})
    answer, _ = deliver(payload("log-v1-dimensions.json"), resolver)

    assert answer.status == 202
    assert accepted_vms(answer) == [vm("vm-web-01")]
    assert resolver.calls[0][0] == ["VM-WEB-01"]


def test_older_log_alert_without_results_falls_back_to_affected_configuration_items() -> None:
    doc = payload("log-v1-search-results.json")
    context = doc["data"]["alertContext"]
    context["SearchResults"] = None
    context["IncludedSearchResults"] = "False"
    resolver = FakeResolver({"VM-WEB-01": [vm("vm-web-01")], "VM-APP-02": [vm("vm-app-02")]})
    answer, _ = deliver(doc, resolver)

    assert accepted_vms(answer) == [vm("vm-web-01"), vm("vm-app-02")]


def test_resource_scoped_log_alert_does_not_look_up_its_computer_dimension() -> None:
    resolver = FakeResolver({"VM-APP-02": [vm("a-different-vm")]})
    answer, _ = deliver(payload("log-v2-vm.json"), resolver)

    assert accepted_vms(answer) == [vm("vm-app-02")]
    assert resolver.calls == []


def test_scale_set_instance_is_ignored_and_never_read_as_a_vm() -> None:
    answer, sink = deliver(payload("scale-set-instance.json"))

    assert answer.status == 200
    assert sink.requests == []
    [ignored] = answer.body["ignored"]
    assert "virtualmachinescalesets/vmss-web/virtualmachines/3" in ignored["target"]
    assert ignored["reason"] == SCALE_SET_REASON == "virtual machine scale sets are not yet supported"


def test_scale_set_instance_in_a_resource_id_dimension_is_ignored_too() -> None:
    doc = payload("log-v2-workspace-resourceid.json")
    dims = doc["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"]
    dims[0]["value"] = (
        f"/subscriptions/{vm('x').subscription}/resourceGroups/rg-prod/providers/Microsoft.Compute"
        "/virtualMachineScaleSets/vmss-app/virtualMachines/12"
    )
    answer, sink = deliver(doc, FakeResolver({"VM-DB-03": [vm("vm-db-03")]}))

    assert sink.requests == []
    assert answer.body["ignored"][0]["reason"] == SCALE_SET_REASON


def test_non_vm_target_is_ignored_with_its_type() -> None:
    answer, sink = deliver(payload("non-vm-target.json"))

    assert answer.status == 200
    assert sink.requests == []
    assert answer.body["ignored"][0]["reason"] == "not a virtual machine (microsoft.storage/storageaccounts)"
    assert "no virtual machine" in answer.body["reason"]


def test_vm_child_resource_is_not_the_vm() -> None:
    doc = payload("metric-vm.json")
    doc["data"]["essentials"]["alertTargetIDs"] = [str(vm("vm-web-01")) + "/extensions/CustomScriptExtension"]
    answer, sink = deliver(doc)

    assert sink.requests == []
    assert answer.body["ignored"][0]["reason"] == "not a virtual machine (microsoft.compute/virtualmachines/extensions)"


def test_service_health_alert_is_about_services_not_a_vm() -> None:
    answer, sink = deliver(payload("service-health.json"))

    assert answer.status == 200
    assert sink.requests == []
    assert "service health" in answer.body["ignored"][0]["reason"]


def test_workspace_alert_without_machine_dimensions_says_how_to_split_the_rule() -> None:
    doc = payload("log-v2-workspace-computer.json")
    doc["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"] = []
    answer, _ = deliver(doc, FakeResolver())

    assert answer.status == 200
    assert "_ResourceId or Computer dimension" in answer.body["ignored"][0]["reason"]


def test_budget_alert_without_targets_is_understood_and_does_nothing() -> None:
    answer, sink = deliver(payload("budget.json"))

    assert answer.status == 200
    assert sink.requests == []
    assert answer.body["reason"] == "the alert names no resource at all"


def test_resolved_alert_is_acknowledged_with_the_reason_and_starts_nothing() -> None:
    answer, sink = deliver(payload("resolved.json"))

    assert answer.status == 200
    assert sink.requests == []
    assert sink.claims == 0
    assert answer.body["reason"].startswith("monitorCondition is Resolved: nothing to do")


def test_mixed_targets_take_the_vms_and_explain_the_rest() -> None:
    doc = payload("metric-vm.json")
    storage = payload("non-vm-target.json")["data"]["essentials"]["alertTargetIDs"][0]
    doc["data"]["essentials"]["alertTargetIDs"] = [str(vm("vm-a")), storage, str(vm("VM-A")).lower(), str(vm("vm-b"))]
    answer, _ = deliver(doc)

    assert answer.status == 202
    assert accepted_vms(answer) == [vm("vm-a"), vm("vm-b")]
    assert [item["target"] for item in answer.body["ignored"]] == [storage]


def test_options_follow_the_global_dry_run_setting() -> None:
    _, sink = deliver(payload("metric-vm.json"), RDPR_DRY_RUN="true")

    assert sink.requests[0].options.dry_run is True
