"""Scope is a trust boundary no look-alike crosses: through the real handlers, queue, worker and emulator.

The fleet holds one in-scope VM in `rg-kiosk` and VMs in groups Azure treats as different ones but Python's
`lower()` or `casefold()` would not (a KELVIN SIGN for `K`, a sharp s for `ss`, dotted and dotless i). Every
one is posted as an alert target and as a runbook VM; the emulator's request log must show zero requests of
any kind to them, and each request must end `skipped` with the scope as its reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from sim.fleet import SUBSCRIPTION, Fleet, make_vm
from sim.server import Emulator
from tests.fixtures.emulator import EmulatorFactory, emulator_env
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert
from tests.intake.support import payload

IN_SCOPE_GROUP = "rg-kiosk-ss"
LOOK_ALIKE_GROUPS = {
    "vm-kelvin": "rg-\u212aiosk-ss",  # lower() gives rg-kiosk-ss
    "vm-angstrom": "rg-kiosk-ss\u212b",  # a different group even for lower(); here for the emulator index
    "vm-sharp": "rg-kiosk-\u00df",  # casefold() gives rg-kiosk-ss
    "vm-dotless": "rg-k\u0131osk-ss",  # upper() gives RG-KIOSK-SS
    "vm-dotted": "rg-k\u0130osk-ss",
    "vm-longs": "rg-kiosk-\u017f\u017f",  # upper() gives RG-KIOSK-SS
}
UNPARSED_TWIN = "vm-tw\u00efn-out"


@pytest.fixture
def emulator(emulator_factory: EmulatorFactory) -> Emulator:
    vms = [make_vm("expired-certificate", 0, name="vm-inscope", resource_group=IN_SCOPE_GROUP)]
    for index, (name, group) in enumerate(LOOK_ALIKE_GROUPS.items(), start=1):
        vms.append(make_vm("expired-certificate", index, name=name, resource_group=group))
    # Two machines with one computer name: one in scope, one in a group outside it.
    index = len(vms)
    for offset, (name, group) in enumerate((("vm-shared-in", IN_SCOPE_GROUP), ("vm-shared-out", "rg-other"))):
        shared = make_vm("expired-certificate", index + offset, name=name, resource_group=group)
        shared.guest.computer_name = "SHARED01"
        vms.append(shared)
    # The same, but the out-of-scope twin's name is one Azure allows and `VmId.parse` does not (non-ASCII).
    index = len(vms)
    for offset, (name, group) in enumerate((("vm-twin-in", IN_SCOPE_GROUP), (UNPARSED_TWIN, "rg-other"))):
        twin = make_vm("expired-certificate", index + offset, name=name, resource_group=group)
        twin.guest.computer_name = "SHARED02"
        vms.append(twin)
    return emulator_factory(Fleet(vms))


@pytest.fixture
def product_env(emulator: Emulator, storage_env: dict[str, str]) -> dict[str, str]:
    storage = {k: storage_env[k] for k in ("RDPR_STORAGE_CONNECTION", "RDPR_TABLE_PREFIX", "RDPR_QUEUE_NAME")}
    env = emulator_env(emulator, [f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{IN_SCOPE_GROUP}"])
    return {**env, **storage, "RDPR_BOOT_TIMEOUT_SECONDS": "4", "RDPR_PROBE_TIMEOUT_SECONDS": "1"}


def _requests_to(emulator: Emulator, name: str) -> list[Any]:
    return [entry for entry in emulator.log.entries() if f"/virtualmachines/{name}" in entry.path.lower()]


def test_no_look_alike_group_is_in_scope_and_none_sees_a_request(functions: Functions) -> None:
    fleet = {vm.name: vm for vm in functions.emulator.fleet}
    request_ids = []
    for name in LOOK_ALIKE_GROUPS:
        target = fleet[name].resource_id
        alert = metric_alert(target)
        # The helper lower-cases targets as Python does (a KELVIN SIGN becomes k); Azure's lower-casing does not.
        alert["data"]["essentials"]["alertTargetIDs"] = [target]
        for route, doc in (("alerts", alert), ("remediations", {"vms": [target]})):
            response = functions.post(route, doc)
            assert response.status_code == 202, (name, route, response.get_body())
            request_ids += body(response)["requestIds"]
    functions.host.drain(timeout=60)
    for name in LOOK_ALIKE_GROUPS:
        assert _requests_to(functions.emulator, name) == [], name
    for request_id in request_ids:
        status = body(functions.get_status(request_id))
        assert status["outcome"] == "skipped" and "outside the configured scope" in status["outcomeReason"], status
    # The in-scope VM beside them is still remediated: the rule is not simply "refuse everything".
    response = functions.post("alerts", metric_alert(fleet["vm-inscope"].resource_id))
    functions.host.drain(timeout=60)
    assert body(functions.get_status(body(response)["requestIds"][0]))["outcome"] == "remediated"
    assert _requests_to(functions.emulator, "vm-inscope") != []


def _computer_alert(computer: str) -> dict[str, Any]:
    doc = payload("log-v2-workspace-computer.json")
    doc["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"] = [{"name": "Computer", "value": computer}]
    return doc


def test_a_computer_name_shared_with_an_out_of_scope_vm_is_not_applied_to_the_in_scope_one(
    functions: Functions,
) -> None:
    response = functions.post("alerts", _computer_alert("shared01.corp.contoso.com"))

    assert response.status_code == 200, response.get_body()
    unresolved = body(response)["unresolved"]
    assert len(unresolved) == 1 and "2 VMs have this computer name (1 in scope)" in unresolved[0]["reason"]
    assert functions.queued() == 0
    assert _requests_to(functions.emulator, "vm-shared-in") == []
    assert _requests_to(functions.emulator, "vm-shared-out") == []
    # The lookup itself went to Resource Graph at tenant scope: every VM the identity can see.
    assert [entry.operation for entry in functions.emulator.log.entries()] == ["resourceGraph"]


def test_a_computer_name_shared_with_a_vm_whose_id_does_not_parse_is_not_applied(functions: Functions) -> None:
    response = functions.post("alerts", _computer_alert("shared02"))

    assert response.status_code == 200, response.get_body()
    unresolved = body(response)["unresolved"]
    assert len(unresolved) == 1 and "2 VMs have this computer name (1 in scope)" in unresolved[0]["reason"]
    assert functions.queued() == 0
    assert _requests_to(functions.emulator, "vm-twin-in") == []
    assert [entry.operation for entry in functions.emulator.log.entries()] == ["resourceGraph"]
