"""VM ids and queue messages: the two shapes every trigger has to get right."""

from __future__ import annotations

import pytest

from remediate.model import (
    InvalidResourceId,
    PermanentError,
    Plan,
    RemediationOptions,
    RemediationRequest,
    Trigger,
    VmId,
)

SUB = "00000000-0000-4000-8000-000000000001"
ID = f"/subscriptions/{SUB}/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/vm01"


def test_vm_ids_compare_case_insensitively_and_keep_their_spelling() -> None:
    lower = VmId.parse(ID.lower())
    assert lower == VmId.parse(ID) and hash(lower) == hash(VmId.parse(ID))
    assert str(VmId.parse(ID)) == ID
    assert VmId.parse(ID + "/").name == "vm01"


@pytest.mark.parametrize(
    "text",
    [
        "vm01.contoso.com",
        "10.0.0.4",
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3",
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic",
        "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/bad name",
        "",
    ],
)
def test_anything_but_a_vm_id_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(InvalidResourceId) as caught:
        VmId.parse(text)
    assert caught.value.reason


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidResourceId, match="int"):
        VmId.parse(42)


def test_queue_message_round_trip() -> None:
    request = RemediationRequest(
        VmId.parse(ID), Trigger.ALERT, "alert x", RemediationOptions(Plan.FULL, force=True), "alert:x:vm01"
    )
    again = RemediationRequest.from_message(request.to_message())
    assert again == request


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        {"schema": 2},
        {"schema": 1, "requestId": "r", "vm": ID, "trigger": "pager"},
        {"schema": 1, "vm": ID, "trigger": "alert"},
        {"schema": 1, "requestId": "r", "vm": "10.0.0.4", "trigger": "alert"},
    ],
)
def test_bad_queue_messages_are_permanent_errors(message: object) -> None:
    with pytest.raises(PermanentError):
        RemediationRequest.from_message(message)
