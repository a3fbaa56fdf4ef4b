"""What the emulator rejects, as ARM does: no token, no api-version, malformed bodies, unknown paths."""

from __future__ import annotations

import json

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient

from remediate.azure.clients import AzureClients
from sim.fleet import RESOURCE_GROUP, SUBSCRIPTION
from sim.server import Emulator
from tests.sim.support import RawResponse, raw_request

VM_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    "/providers/Microsoft.Compute/virtualMachines/vm-healthy"
)
TOKEN = {"Authorization": "Bearer test-token"}


def request(
    emulator: Emulator, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> RawResponse:
    return raw_request(emulator.arm_url, emulator.ca_cert, method, path, body, headers)


class EmptyTokenCredential:
    """A credential whose token is empty: the SDK then sends `Authorization: Bearer ` with nothing after it."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("", 4_000_000_000)


def test_a_request_without_a_bearer_token_is_a_401_with_an_arm_error(emulator: Emulator) -> None:
    answer = request(emulator, "GET", f"{VM_PATH}?api-version=2026-04-01")
    basic = request(
        emulator, "GET", f"{VM_PATH}?api-version=2026-04-01", headers={"Authorization": "Basic dXNlcjpwdw=="}
    )

    assert answer.status == 401
    assert answer.json()["error"]["code"] == "AuthenticationFailed"
    assert basic.status == 401
    assert answer.headers["x-ms-request-id"]


def test_the_sdk_without_a_token_raises_client_authentication_error(emulator: Emulator) -> None:
    compute = ComputeManagementClient(
        EmptyTokenCredential(), SUBSCRIPTION, base_url=emulator.arm_url, connection_verify=emulator.ca_cert
    )
    with compute, pytest.raises(ClientAuthenticationError) as caught:
        compute.virtual_machines.get(RESOURCE_GROUP, "vm-healthy")

    assert caught.value.status_code == 401
    assert [entry.status for entry in emulator.log.entries()] == [401]


def test_every_answer_carries_a_request_id(emulator: Emulator) -> None:
    answers = [
        request(emulator, "GET", f"{VM_PATH}?api-version=2026-04-01", headers=TOKEN),
        request(emulator, "GET", f"{VM_PATH}x?api-version=2026-04-01", headers=TOKEN),
        request(emulator, "GET", VM_PATH, headers=TOKEN),
    ]

    assert [answer.status for answer in answers] == [200, 404, 400]
    ids = {answer.headers["x-ms-request-id"] for answer in answers}
    assert len(ids) == 3


def test_missing_api_version_is_a_400(emulator: Emulator) -> None:
    answer = request(emulator, "GET", VM_PATH, headers=TOKEN)

    assert answer.status == 400
    assert answer.json()["error"]["code"] == "MissingApiVersionParameter"
    assert emulator.log.entries()[-1].api_version is None


def test_any_well_formed_api_version_is_accepted_and_logged(emulator: Emulator) -> None:
    answer = request(emulator, "GET", f"{VM_PATH}?api-version=2019-07-01", headers=TOKEN)
    bogus = request(emulator, "GET", f"{VM_PATH}?api-version=latest", headers=TOKEN)

    assert answer.status == 200
    assert bogus.status == 400
    assert [entry.api_version for entry in emulator.log.entries()] == ["2019-07-01", "latest"]


def test_a_malformed_run_command_body_is_a_400(emulator: Emulator, azure_clients: AzureClients) -> None:
    compute = azure_clients.compute(SUBSCRIPTION)
    url = f"{emulator.arm_url}{VM_PATH}/runCommand?api-version=2026-04-01"

    not_json = compute.send_request(HttpRequest("POST", url, content=b'{"commandId": "RunPowerShellScript",'))
    no_script = compute.send_request(HttpRequest("POST", url, json={"commandId": "RunPowerShellScript"}))
    bad_parameters = compute.send_request(
        HttpRequest("POST", url, json={"commandId": "RunPowerShellScript", "script": ["x"], "parameters": [{"v": 1}]})
    )

    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "InvalidRequestContent"
    assert no_script.status_code == 400
    assert no_script.json()["error"]["code"] == "InvalidParameter"
    assert bad_parameters.status_code == 400
    assert not any(vm.run_command_busy for vm in emulator.fleet)


def test_unknown_paths_and_methods_are_refused(emulator: Emulator) -> None:
    unknown = request(
        emulator,
        "GET",
        f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Web/sites?api-version=2023-01-01",
        headers=TOKEN,
    )
    delete = request(emulator, "DELETE", f"{VM_PATH}?api-version=2026-04-01", headers=TOKEN)

    assert unknown.status == 404
    assert unknown.json()["error"]["code"] == "InvalidResourceType"
    assert delete.status == 405
    assert emulator.fleet.get(VM_PATH) is not None


def test_paths_are_case_insensitive_like_arm(emulator: Emulator) -> None:
    answer = request(emulator, "GET", f"{VM_PATH.upper()}?api-version=2026-04-01", headers=TOKEN)

    assert answer.status == 200
    assert answer.json()["name"] == "vm-healthy"
    assert emulator.log.entries()[-1].operation == "getVm"


def test_graph_and_logs_are_routed_with_their_own_operation_names(emulator: Emulator) -> None:
    graph = request(
        emulator,
        "POST",
        "/providers/Microsoft.ResourceGraph/resources?api-version=2024-04-01",
        b"{not json",
        headers=TOKEN,
    )
    logs = request(emulator, "POST", f"/v1/workspaces/{emulator.workspace_id}/query", b"[]", headers=TOKEN)
    anonymous_logs = request(emulator, "POST", f"/v1/workspaces/{emulator.workspace_id}/query", b"{}")

    assert graph.status == 400
    assert logs.status == 400
    assert anonymous_logs.status == 401
    assert anonymous_logs.json()["error"]["code"] == "AuthorizationRequiredError"
    assert [entry.operation for entry in emulator.log.entries()] == ["resourceGraph", "logsQuery", "logsQuery"]


def test_admin_endpoints_arm_faults_and_show_state_without_auth_or_logging(emulator: Emulator) -> None:
    vm_id = VM_PATH.lower()
    armed = request(
        emulator, "POST", "/_sim/faults", json.dumps({"operation": "getVm", "kind": "503", "vm": vm_id}).encode()
    )
    refused = request(emulator, "POST", "/_sim/faults", json.dumps({"operation": "getVm", "kind": "boom"}).encode())
    throttled = request(emulator, "GET", f"{VM_PATH}?api-version=2026-04-01", headers=TOKEN)
    state = request(emulator, "GET", f"/_sim/state?vm={vm_id}")

    assert armed.status == 201
    assert refused.status == 400
    assert throttled.status == 503
    [vm] = state.json()["vms"]
    assert vm["power_state"] == "running"
    assert vm["agent_ready"] is True
    assert len(vm["guest"]["certificate"]["thumbprint"]) == 40
    assert [entry.operation for entry in emulator.log.entries()] == ["getVm"]


def test_a_keep_alive_connection_serves_many_requests(emulator: Emulator, azure_clients: AzureClients) -> None:
    compute = azure_clients.compute(SUBSCRIPTION)

    for _ in range(20):
        compute.virtual_machines.get(RESOURCE_GROUP, "vm-healthy")

    assert len(emulator.log.entries()) == 20
