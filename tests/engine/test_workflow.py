"""Each fleet scenario through the real workflow: outcome, and exactly which POSTs reached the VM."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from remediate.engine.workflow import Workflow, WorkflowResult
from remediate.model import Outcome, Plan, TransientError
from sim.certs import rdp_certificate
from sim.fleet import VirtualMachine
from tests.engine.conftest import Engine

RC, RESTART = "runCommand", "restart"


@pytest.mark.parametrize(
    ("scenario", "posts"),
    [
        # diagnose, renew, restart, in-guest verification
        ("expired-certificate", [RC, RC, RESTART, RC]),
        # diagnose, read granted on the one key file, restart, verification
        ("keystore-acl", [RC, RC, RESTART, RC]),
        ("key-deny", [RC, RC, RESTART, RC]),
        # the key container set aside and Windows' own certificate renewed through SessionEnv, in one Run Command
        ("key-corrupt", [RC, RC, RESTART, RC]),
        # the successor of an expired custom certificate is pinned
        ("custom-certificate", [RC, RC, RESTART, RC]),
        ("firewall-closed", [RC, RC, RESTART, RC]),
        ("tls12-disabled", [RC, RC, RESTART, RC]),
    ],
)
def test_broken_vms_are_remediated_and_verified(engine: Engine, scenario: str, posts: list[str]) -> None:
    result = engine.run(scenario)
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert result.rebooted and result.verification == "healthy"
    assert engine.posts_to(scenario) == posts
    record = engine.ledger.get(result.request_id)
    assert record is not None and record.outcome == "remediated" and record.state == "done"
    assert engine.ledger.vm_state(engine.request(scenario).vm).owner is None  # lock released


def test_healthy_vm_is_diagnosed_but_not_rebooted(engine: Engine) -> None:
    result = engine.run("healthy")
    assert result.outcome is Outcome.HEALTHY and not result.rebooted
    assert engine.posts_to("healthy") == [RC]


@pytest.mark.parametrize(
    ("scenario", "reason_part"),
    [
        ("linux", "not a Windows VM"),
        ("deallocated", "deallocated"),
        ("agent-not-ready", "agent is not ready"),
        ("opted-out", "opted out"),
    ],
)
def test_vms_that_must_not_be_touched_are_skipped_without_a_post(
    engine: Engine, scenario: str, reason_part: str
) -> None:
    result = engine.run(scenario)
    assert result.outcome is Outcome.SKIPPED and reason_part in result.reason
    assert engine.posts_to(scenario) == []


def test_out_of_scope_vm_is_never_even_read(engine: Engine) -> None:
    result = engine.run("out-of-scope")
    assert result.outcome is Outcome.SKIPPED and "outside the configured scope" in result.reason
    assert engine.calls_to("out-of-scope") == []


def test_vm_that_never_comes_back_fails_and_releases_its_lock(engine: Engine) -> None:
    result = engine.run("never-returns")
    assert result.outcome is Outcome.FAILED and result.failed_step == "wait"
    assert "did not come back" in result.reason and result.rebooted
    assert engine.posts_to("never-returns").count(RESTART) == 1
    assert engine.ledger.vm_state(engine.request("never-returns").vm).owner is None
    record = engine.ledger.get(result.request_id)
    assert record is not None and record.outcome == "failed" and record.failed_step == "wait"


def test_dry_run_plans_without_any_post(engine: Engine) -> None:
    result = engine.run("expired-certificate", dry_run=True)
    assert result.outcome is Outcome.PLANNED and "dry run" in result.reason
    assert engine.posts_to("expired-certificate") == []


def test_diagnose_only_runs_only_the_read_only_script(engine: Engine) -> None:
    result = engine.run("expired-certificate", diagnose_only=True)
    assert result.outcome is Outcome.PLANNED and "renew-certificate" in result.reason
    assert engine.posts_to("expired-certificate") == [RC]


def test_the_full_plan_never_renames_machinekeys_without_evidence_whatever_the_overrides(engine: Engine) -> None:
    """An expired certificate with a working key store: the full plan with every override renews, never renames."""
    result = engine.run("expired-certificate", plan=Plan.FULL, force=True, force_keystore=True)
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert not engine.vm("expired-certificate").guest.machinekeys_backups
    assert "reset-machinekeys" not in result.actions and "reset-machinekeys" not in " ".join(
        s.name for s in result.steps
    )


def test_a_broken_store_is_not_renamed_while_other_key_files_live_in_it(engine: Engine) -> None:
    """Set aside the one key and renew (one reboot); Windows still cannot make a key; the store rename would
    set aside .NET's key container with it, so it is refused, and nothing reboots again."""
    result = engine.run("keystore-corrupt")
    assert result.outcome is Outcome.FAILED, result.reason
    assert "refused reset-machinekeys" in result.reason and "rerun with forceKeyStore" in result.reason
    assert engine.posts_to("keystore-corrupt") == [RC, RC, RESTART, RC]
    assert not engine.vm("keystore-corrupt").guest.machinekeys_backups


def test_force_for_sessions_does_not_rename_the_store(engine: Engine) -> None:
    result = engine.run("keystore-corrupt", force=True)
    assert result.outcome is Outcome.FAILED and "rerun with forceKeyStore" in result.reason, result.reason
    assert not engine.vm("keystore-corrupt").guest.machinekeys_backups


def test_with_force_keystore_the_store_is_renamed_last_the_crp_key_carried_and_the_vm_recovers(engine: Engine) -> None:
    crp_key = engine.vm("keystore-corrupt").guest.crp_key
    result = engine.run("keystore-corrupt", force_keystore=True)
    assert result.outcome is Outcome.REMEDIATED, result.reason
    # diagnose, set aside the key and renew, restart, verify; then the rename, restart, verify
    assert engine.posts_to("keystore-corrupt") == [RC, RC, RESTART, RC, RC, RESTART, RC]
    guest = engine.vm("keystore-corrupt").guest
    assert len(guest.machinekeys_backups) == 1  # renamed once, never deleted
    assert guest.crp_key == crp_key  # the agent's transport key was copied into the new folder
    record = engine.ledger.get(result.request_id)
    assert record is not None
    assert [s.name for s in record.steps if s.name.startswith(("set-aside", "renew", "reset"))] == [
        "renew-certificate",
        "reset-machinekeys-2",
    ]
    renew = next(s for s in record.steps if s.name == "renew-certificate")
    assert renew.summary is not None and renew.summary["findings"]["set_aside"].startswith("C:\\")


class Killed(BaseException):
    """Stands for the worker process dying: not an Exception, so nothing in the workflow catches it."""


STEPS = [
    "preflight",
    "locate",
    "probe",
    "network-path",
    "diagnose",
    "classify",
    "plan",
    "renew-certificate",
    "reboot",
    "wait",
    "verify",
    "verify-guest",
    "plan-1-after",
]


@pytest.mark.parametrize("kill_step", STEPS)
@pytest.mark.parametrize("moment", ["started", "finished"])
def test_a_worker_killed_at_any_step_boundary_is_resumed_with_at_most_one_reboot(
    engine: Engine, kill_step: str, moment: str
) -> None:
    request = engine.request("expired-certificate")

    def die(step: str, detail: str) -> None:
        if step == kill_step and (detail == "started") == (moment == "started"):
            raise Killed

    with pytest.raises(Killed):
        engine.workflow(request, progress=die).run()
    result = engine.workflow(request).run()  # the redelivery, same request id
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert engine.posts_to("expired-certificate").count(RESTART) <= 1
    record = engine.ledger.get(request.request_id)
    assert record is not None and record.state == "done"


def test_polling_that_fails_after_the_restart_was_accepted_is_resumed_without_a_second_restart(
    engine: Engine,
) -> None:
    request = engine.request("expired-certificate")
    settings = engine.with_settings(retry_total=1, retry_backoff_seconds=0.0)
    clients = type(engine.clients)(settings)

    def break_polling(step: str, detail: str) -> None:
        # Once Azure has accepted the restart, every status read fails: the operation's (Compute's restart
        # operation ends within a second, so azure-core may already know its end) and the VM's instance view.
        if step == "reboot" and detail != "started":
            engine.emulator.faults.add("operationStatus", "503", count=1000)
            engine.emulator.faults.add("getVm", "503", count=1000)

    first = Workflow(
        request, settings=settings, ledger=engine.ledger, clients=clients, progress=break_polling, retry_later=True
    )
    with pytest.raises(TransientError):
        first.run()
    assert engine.ledger.get(request.request_id).steps[-1].name == "wait"  # type: ignore[union-attr]
    engine.emulator.faults.clear()
    result = engine.workflow(request).run()  # the redelivery
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert engine.posts_to("expired-certificate").count(RESTART) == 1
    clients.close()


def test_two_workers_on_one_vm_exactly_one_remediates(engine: Engine) -> None:
    results: list[WorkflowResult] = []
    start = threading.Barrier(2)

    def work() -> None:
        workflow = engine.workflow(engine.request("expired-certificate"))
        start.wait()
        results.append(workflow.run())

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["remediated", "skipped"]
    skipped = next(r for r in results if r.outcome is Outcome.SKIPPED)
    assert skipped.reason.startswith("locked")
    assert engine.posts_to("expired-certificate").count(RESTART) == 1


def test_cooldown_and_attempt_limit_stop_a_vm_that_keeps_breaking(engine: Engine) -> None:
    rules = engine.with_settings(cooldown_minutes=30, max_attempts=2)
    vm = engine.vm("expired-certificate")
    clock = [dt.datetime.now(dt.UTC)]

    def run_at(offset_minutes: int) -> WorkflowResult:
        now = clock[0] + dt.timedelta(minutes=offset_minutes)
        return engine.workflow(engine.request("expired-certificate"), settings=rules, now=lambda: now).run()

    assert run_at(0).outcome is Outcome.REMEDIATED
    vm.guest.certificate = vm.guest.certificate and type(vm.guest.certificate)(
        vm.guest.computer_name, clock[0] - dt.timedelta(days=200), clock[0] - dt.timedelta(days=1)
    )
    second = run_at(5)
    assert second.outcome is Outcome.SKIPPED and "cooldown" in second.reason
    assert run_at(40).outcome is Outcome.REMEDIATED
    vm.guest.certificate = type(vm.guest.certificate)(  # type: ignore[misc]
        vm.guest.computer_name, clock[0] - dt.timedelta(days=200), clock[0] - dt.timedelta(days=1)
    )
    third = run_at(80)
    assert third.outcome is Outcome.SKIPPED and "attempt limit" in third.reason
    assert engine.posts_to("expired-certificate").count(RESTART) == 2


def expire_certificate(vm: VirtualMachine) -> None:
    """The VM breaks again the same way: its certificate expires."""
    now = dt.datetime.now(dt.UTC)
    vm.guest.certificate = rdp_certificate(
        vm.guest.computer_name, now - dt.timedelta(days=200), now - dt.timedelta(days=1)
    )


@pytest.mark.parametrize(("operation", "kind"), [("getVm", "429"), ("restart", "503"), ("runCommand", "409")])
def test_transient_faults_are_retried(engine: Engine, operation: str, kind: str) -> None:
    engine.emulator.faults.add(operation, kind, count=1)
    result = engine.run("expired-certificate")
    assert result.outcome is Outcome.REMEDIATED, result.reason


def test_a_permanent_fault_fails_fast_with_the_step_and_reason(engine: Engine) -> None:
    engine.emulator.faults.add("runCommand", "garbage-output", count=1)  # breaks the output contract
    result = engine.run("expired-certificate")
    assert result.outcome is Outcome.FAILED and result.failed_step == "diagnose"
    assert result.reason and RESTART not in engine.posts_to("expired-certificate")


def test_an_operation_that_failed_with_a_retry_later_code_is_retried(engine: Engine) -> None:
    # Run Command ends Failed with InternalExecutionError ("Please retry later"): one transient fault must
    # not fail the request.
    engine.emulator.faults.add("runCommand", "lro-failed", count=1)
    result = engine.run("expired-certificate")
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert engine.posts_to("expired-certificate").count("runCommand") >= 4  # diagnose twice, then the rest


def test_every_step_is_in_the_audit_trail(engine: Engine) -> None:
    result = engine.run("expired-certificate")
    record = engine.ledger.get(result.request_id)
    assert record is not None
    names = [step.name for step in record.steps]
    assert names == STEPS
    assert all(step.status == "ok" and step.finished_at is not None for step in record.steps)
    renew = next(step for step in record.steps if step.name == "renew-certificate")
    assert renew.summary is not None and renew.summary["script"] == "renew-certificate" and renew.summary["changed"]


def test_workflow_records_an_outcome_even_for_an_unknown_vm(engine: Engine) -> None:
    request = engine.request("healthy")
    ghost = request.vm.__class__(request.vm.subscription, request.vm.resource_group, "vm-that-does-not-exist")
    result = Workflow(
        type(request)(ghost, request.trigger, "test"),
        settings=engine.settings,
        ledger=engine.ledger,
        clients=engine.clients,
    ).run()
    assert result.outcome is Outcome.SKIPPED and "not found" in result.reason
    assert engine.ledger.get(result.request_id) is not None
