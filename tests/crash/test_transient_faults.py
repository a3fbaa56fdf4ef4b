"""Azure's transient faults at a realistic rate: no request may fail because of one of them, and the retry
setting must govern how often a call is retried."""

from __future__ import annotations

import dataclasses
import random

import pytest

from remediate.azure import vm as azure_vm
from remediate.azure.clients import AzureClients
from remediate.model import TransientError, VmId
from remediate.settings import Settings
from sim.fleet import Fleet, make_vm
from sim.server import Emulator
from tests.crash.conftest import RigFactory
from tests.crash.test_crash_consistency import _check_invariants, _run_workers


def test_twenty_percent_injected_azure_faults_fail_no_request(rig: RigFactory) -> None:
    fleet = Fleet(
        [make_vm("expired-certificate", i, name=f"cert-{i:02d}") for i in range(5)]
        + [make_vm("healthy", 5 + i, name=f"healthy-{i:02d}") for i in range(2)]
    )
    # The emulator's Activity Log lags 1.8 s at the test time scale; waiting 4 s before taking a refused
    # restart as not accepted keeps the window longer than the lag (as 25 minutes is to Azure's 20) while one
    # worker at a time works through a restart POST answered 503 on every fifth call.
    made = rig(fleet, RDPR_MAX_DEQUEUE_COUNT="5", RDPR_RESTART_EVIDENCE_SECONDS="4")
    requests = {made.enqueue(vm).request_id: vm for vm in fleet}
    # Throttling, server errors and dropped connections on every Azure call, and Run Commands and restarts
    # that end Failed with a retry-later code: about one call in five.
    made.emulator.faults.at_random(0.2, ("429", "500", "503", "reset", "lro-failed"), seed=5)
    _run_workers(made, {}, budget=300, rng=random.Random(1), kill_share=0.0)
    made.emulator.faults.at_random(0.0)
    faulted = sum(1 for entry in made.emulator.log.entries() if entry.status >= 429 or entry.status == 0)
    assert faulted >= 15, "the run must actually have met faults"
    _check_invariants(made, requests, must_remediate=True)


@pytest.mark.parametrize("total", [2, 5])
def test_the_retry_setting_governs_how_often_a_call_is_retried(
    emulator: Emulator, azure_settings: Settings, total: int
) -> None:
    settings = dataclasses.replace(azure_settings, retry_total=total, retry_backoff_seconds=0.0)
    vm = emulator.fleet.by_scenario("healthy")[0]
    emulator.faults.add("getVm", "503", count=100)
    clients = AzureClients(settings)
    try:
        with pytest.raises(TransientError):
            azure_vm.get_vm(clients, VmId.parse(vm.resource_id))
    finally:
        clients.close()
    tries = [e for e in emulator.log.entries() if e.operation == "getVm"]
    assert len(tries) == total + 1  # the first try and RDPR_RETRY_TOTAL retries, even above azure-core's 3
