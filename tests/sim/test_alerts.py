"""Alerts Management's changestate as azure-rest-api-specs shows it (specification/alertsmanagement/resource-manager/
Microsoft.AlertsManagement/AlertsManagement/preview/2019-05-05-preview/examples/Alerts_ChangeState.json): the
subscription-scoped alert id, `newState` in the query, the comment in the body, the alert in the answer."""

from __future__ import annotations

import json
import uuid

from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.server import Emulator
from tests.sim.support import raw_request

TOKEN = {"Authorization": "Bearer test-token", "Content-Type": "application/json"}
# The essentials fields of the example's 200 answer (monitorConditionResolvedDateTime is there for a resolved alert).
EXAMPLE_ESSENTIALS = {
    "severity", "signalType", "alertState", "monitorCondition", "monitorService", "targetResource",
    "targetResourceName", "targetResourceGroup", "targetResourceType", "sourceCreatedId", "smartGroupId",
    "smartGroupingReason", "alertRule", "startDateTime", "lastModifiedDateTime", "lastModifiedUserName",
    "actionStatus", "description",
}  # fmt: skip
VM = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines/vm-a"


def _fired(emulator: Emulator) -> str:
    guid = str(uuid.uuid4())
    emulator.alerts.fire(f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}", VM)
    return guid


def test_changestate_answers_in_the_examples_shape(emulator: Emulator) -> None:
    guid = _fired(emulator)
    path = (
        f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}/changestate"
        "?api-version=2019-05-05-preview&newState=Acknowledged"
    )
    answer = raw_request(emulator.arm_url, emulator.ca_cert, "POST", path, b'{"comment": "seen"}', TOKEN)
    assert answer.status == 200
    alert = answer.json()
    assert set(alert) == {"properties", "id", "type", "name"}
    assert set(alert["properties"]) == {"essentials", "egressConfig", "context"}
    assert set(alert["properties"]["essentials"]) == EXAMPLE_ESSENTIALS
    essentials = alert["properties"]["essentials"]
    assert essentials["alertState"] == "Acknowledged" and essentials["targetResourceName"] == "vm-a"
    assert alert["id"].endswith(f"/providers/Microsoft.AlertsManagement/alerts/{guid}")
    assert alert["type"] == "Microsoft.AlertsManagement/alerts"
    assert emulator.alerts.get(alert["id"]).changes == [("Acknowledged", "seen")]  # type: ignore[union-attr]


def test_changestate_refuses_what_the_spec_does_not_describe(emulator: Emulator) -> None:
    guid = _fired(emulator)
    base = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}/changestate"

    def post(path: str, body: bytes = b"{}") -> int:
        return raw_request(emulator.arm_url, emulator.ca_cert, "POST", path, body, TOKEN).status

    # newState is a query parameter, one of New, Acknowledged, Closed; in the body it is not read.
    assert post(f"{base}?api-version=2019-05-05-preview", json.dumps({"newState": "Closed"}).encode()) == 400
    assert post(f"{base}?api-version=2019-05-05-preview&newState=Resolved") == 400
    # The alert is subscription-scoped: a resource-group form of the path is no route at all.
    scoped = base.replace("/providers/", f"/resourceGroups/{RESOURCE_GROUP}/providers/", 1)
    assert post(f"{scoped}?api-version=2019-05-05-preview&newState=Closed") == 404
    assert post(f"{base}?api-version=2019-05-05-preview&newState=Closed", b'{"comment": 42}') == 400
    alert = emulator.alerts.get(f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}")
    assert alert is not None and alert.state == "New" and alert.changes == []  # nothing refused was applied
