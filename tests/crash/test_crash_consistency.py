"""Crash consistency: real worker processes SIGKILLed at every step boundary and at random moments, every
message delivered twice, storage down for short and long outages, an intake killed between claim and message.

Across all of it: no VM restarted twice, no change without its restart and cooldown, no request without a
truthful outcome, no lock left, `rebooted` equal to the restarts Azure accepted, no alert lost.
"""

from __future__ import annotations

import logging
import random
import signal
import time

import pytest

from remediate.azure.clients import AzureClients
from remediate.engine.evidence import activity_log_evidence
from remediate.intake.reconcile import reconcile
from remediate.ledger import DONE, AuditRecord, Ledger
from remediate.model import VmId
from sim.fleet import Fleet, VirtualMachine, make_vm
from tests.crash.conftest import RigFactory
from tests.crash.rig import Rig, accepted_restarts, crash_points, messages_left

CHANGING = ("expired-certificate", "tls12-disabled")
log = logging.getLogger(__name__)


def _fleet(counts: dict[str, int]) -> Fleet:
    vms: list[VirtualMachine] = []
    for scenario, count in counts.items():
        vms += [make_vm(scenario, len(vms) + i, name=f"{scenario[:8]}-{i:02d}") for i in range(count)]
    return Fleet(vms)


def _run_workers(rig: Rig, plan: dict[str, str], budget: float, rng: random.Random, kill_share: float) -> int:
    """Worker processes one after another until every request is done; some are killed at random moments.
    Returns how many processes died by SIGKILL (planned crash points and random kills)."""
    ledger = rig.ledger()
    deadline = time.monotonic() + budget
    killed = 0
    while not _all_done(rig, ledger):
        assert time.monotonic() < deadline, f"not done within {budget} s: {_open(ledger)}"
        process = rig.spawn(plan)
        kill_at = time.monotonic() + rng.uniform(0.8, 3.0) if rng.random() < kill_share else None
        while process.poll() is None:
            if kill_at is not None and time.monotonic() >= kill_at:
                process.kill()
            time.sleep(0.05)
        if process.returncode == -9:
            killed += 1
        elif process.returncode != 0:
            pytest.fail(f"worker exited {process.returncode}: {rig.log_tail(process)}")
    return killed


def _all_done(rig: Rig, ledger: Ledger) -> bool:
    return not ledger.open_requests() and messages_left(rig, "") == 0 and messages_left(rig, "-poison") == 0


def _open(ledger: Ledger) -> list[tuple[str, str, list[str]]]:
    return [(r.vm, r.state, [f"{s.name}:{s.status}" for s in r.steps]) for r in ledger.open_requests()]


def _check_invariants(rig: Rig, requests: dict[str, VirtualMachine], *, must_remediate: bool) -> None:
    ledger = rig.ledger()
    restarts = accepted_restarts(rig.emulator)
    for request_id, vm in requests.items():
        record = ledger.get(request_id)
        key = VmId.parse(vm.resource_id).key
        accepted = restarts.get(key, 0)
        assert record is not None and record.state == DONE and record.outcome, (vm.name, record)
        assert accepted <= 1, f"{vm.name} was restarted {accepted} times"
        assert record.rebooted == (accepted > 0), (vm.name, accepted, record.outcome_reason)
        state = ledger.vm_state(VmId.parse(vm.resource_id))
        assert state.owner is None, f"{vm.name} is still locked by {state.owner}"
        changed = accepted > 0 or _guest_changed(vm)
        assert (state.last_finished is not None) == changed, (vm.name, changed, record.outcome_reason)
        if must_remediate and vm.scenario in CHANGING:
            assert record.outcome == "remediated", (vm.name, record.outcome_reason, _steps(record))
            assert accepted == 1, f"{vm.name}: the change was made but {accepted} restarts were accepted"
        if vm.scenario == "healthy":
            assert record.outcome in ("healthy", "failed") and accepted == 0, (vm.name, record.outcome_reason)
            if must_remediate:
                assert record.outcome == "healthy", record.outcome_reason


def _guest_changed(vm: VirtualMachine) -> bool:
    guest = vm.guest
    if vm.scenario == "expired-certificate":
        return guest.certificate is not None and guest.certificate.not_after.timestamp() > time.time()
    if vm.scenario == "tls12-disabled":
        return bool(guest.tls12_enabled or guest.pending_tls12)
    return False


def test_sigkill_at_every_step_boundary_and_at_random_moments_with_every_message_twice(rig: RigFactory) -> None:
    fleet = _fleet({"expired-certificate": 30, "tls12-disabled": 5, "healthy": 5})
    made = rig(fleet, RDPR_MAX_DEQUEUE_COUNT="10")
    certs, tls, healthy = (fleet.by_scenario(s) for s in ("expired-certificate", "tls12-disabled", "healthy"))
    cert_steps = made.control_steps(certs.pop())
    tls_steps = made.control_steps(tls.pop())
    healthy_steps = made.control_steps(healthy.pop())
    assert "reboot" in cert_steps and "reboot" in tls_steps and "reboot" not in healthy_steps
    points = list(crash_points(cert_steps))
    assert len(certs) >= len(points) + 2, "every crash point needs its own VM"
    tls_repairs = [s for s in tls_steps if s not in healthy_steps and s not in cert_steps]
    plan: dict[str, str] = {}
    requests: dict[str, VirtualMachine] = {}
    tls_points = [*(f"before-finish:{s}" for s in tls_repairs), "after-start:reboot", "before-finish:reboot"]
    assignments = [
        *zip(certs, points, strict=False),
        *zip(tls, tls_points, strict=False),
        *zip(healthy, ["before-finish:diagnose", "after-start:diagnose", "after-outcome"], strict=False),
    ]
    planned = {vm.name for vm, _ in assignments}
    for vm, point in assignments:
        request = made.enqueue(vm, copies=2)
        plan[request.request_id] = point
        requests[request.request_id] = vm
    for vm in [*certs, *tls, *healthy]:  # no planned crash: random kills and duplicates only
        if vm.name not in planned:
            requests[made.enqueue(vm, copies=2).request_id] = vm

    killed = _run_workers(made, plan, budget=540, rng=random.Random(11), kill_share=0.25)

    fired = {path.stem for path in made.workdir.glob("*.crashed")}
    assert fired == set(plan), f"crash points never reached: {sorted(set(plan) - fired)}"
    assert killed >= len(plan)
    _check_invariants(made, requests, must_remediate=True)
    log.warning(
        "crash run: %d requests (each message twice), %d planned crash points, %d worker processes SIGKILLed, "
        "%d restarts accepted",
        len(requests),
        len(plan),
        killed,
        sum(accepted_restarts(made.emulator).values()),
    )


def test_short_and_long_storage_outages_end_in_truthful_outcomes_and_no_dead_letters(rig: RigFactory) -> None:
    fleet = _fleet({"expired-certificate": 6, "tls12-disabled": 2, "healthy": 3})
    made = rig(fleet, RDPR_MAX_DEQUEUE_COUNT="3")
    requests = {made.enqueue(vm).request_id: vm for vm in fleet}
    process = made.spawn(CRASH_VISIBILITY_SECONDS="1")
    time.sleep(1.5)
    made.proxy.down()  # a short outage: workflows in flight fail a ledger write and are redelivered
    time.sleep(2.0)
    made.proxy.up()
    time.sleep(2.0)
    made.proxy.down()  # a long one: deliveries run out, the poison path runs out too
    time.sleep(14.0)
    made.proxy.up()
    deadline = time.monotonic() + 90
    while process.poll() is None or not _all_done_or_stuck(made):
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGUSR1)
            time.sleep(1)
            process.kill()
            pytest.fail(f"{_open(made.ledger())}\n{made.log_tail(process, 6000)}")
        if process.poll() is not None:
            process = made.spawn(CRASH_VISIBILITY_SECONDS="1")
        time.sleep(0.2)
    # Storage is back: what no delivery will finish, the reconciler closes from the journal.
    clients = AzureClients(made.settings)
    report = reconcile(
        made.ledger(),
        made.request_queue(),
        running_stale_seconds=0,
        queued_stale_seconds=0,
        restart_evidence=activity_log_evidence(clients, made.settings),
    )
    clients.close()
    _check_invariants(made, requests, must_remediate=False)
    closed = [made.ledger().get(request_id) for request_id in report.closed]
    assert all(record is not None and "restart(s) accepted" in record.outcome_reason for record in closed)


def _all_done_or_stuck(rig: Rig) -> bool:
    return messages_left(rig, "") == 0 and messages_left(rig, "-poison") == 0


def test_an_intake_killed_between_claim_and_message_loses_no_alert(rig: RigFactory) -> None:
    fleet = _fleet({"expired-certificate": 4})
    made = rig(fleet)
    points = ["after-claim", "after-prepare", "after-accept", "after-send"]
    for vm, point in zip(fleet, points, strict=True):
        process = made.spawn_intake(vm.resource_id, point)
        assert process.wait(timeout=60) == -9, point
    time.sleep(1.2)  # older than the claim expiry the retry uses below
    queue = made.request_queue(claim_stale_seconds=1.0)
    answers = [made.post_alert(queue, vm.resource_id) for vm in fleet]
    assert all(answer.status in (200, 202) for answer in answers), answers
    made.overrides["RDPR_MAX_DEQUEUE_COUNT"] = "5"
    _run_workers(made, {}, budget=120, rng=random.Random(3), kill_share=0.0)
    ledger = made.ledger()
    for vm in fleet:
        history = ledger.history(VmId.parse(vm.resource_id))
        assert [r.outcome for r in history] == ["remediated"], (vm.name, [(r.state, r.outcome) for r in history])
    assert set(accepted_restarts(made.emulator).values()) == {1}


def _steps(record: AuditRecord) -> list[str]:
    return [f"{s.name}:{s.status}:{s.detail[:120]}" for s in record.steps]
