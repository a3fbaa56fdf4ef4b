"""What a Windows admin's review of the repair decisions asked for, through the real workflow, the real SDK and
the emulator: remote sessions guard every reboot, a step refused at run time ends the round, the default reboot
policy reboots only when a script asks, and the store reset needs evidence and its own override."""

from __future__ import annotations

import datetime as dt

from remediate.model import Outcome
from remediate.settings import SPECS
from sim.fleet import EVERYONE
from tests.engine.conftest import Engine

RC, RESTART = "runCommand", "restart"


def test_a_deny_entry_with_two_sessions_is_neither_repaired_nor_rebooted(engine: Engine) -> None:
    guest = engine.vm("key-deny").guest
    guest.active_sessions = 2
    result = engine.run("key-deny")
    assert result.outcome is Outcome.FAILED and "2 remote session(s)" in result.reason, result.reason
    assert engine.posts_to("key-deny") == [RC] and not result.rebooted
    assert guest.key is not None and guest.key.denies == {EVERYONE}


def test_with_force_the_sessions_are_accepted_and_the_deny_removed(engine: Engine) -> None:
    engine.vm("key-deny").guest.active_sessions = 2
    result = engine.run("key-deny", force=True)
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert engine.posts_to("key-deny") == [RC, RC, RESTART, RC]


def test_a_step_refused_at_run_time_ends_the_round_before_the_next_step(engine: Engine) -> None:
    """Renewal and TLS 1.2 are planned; a user logs on after the plan: the renewal refuses, so the TLS change
    (and the reboot it would bring) is not made on facts that no longer hold."""
    vm = engine.vm("expired-certificate")
    vm.guest.tls12_enabled = False
    vm.guest.events.append((36871, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))

    def user_logs_on(step: str, detail: str) -> None:
        if step == "plan" and detail != "started":
            vm.guest.active_sessions = 1

    result = engine.workflow(engine.request("expired-certificate"), progress=user_logs_on).run()
    assert result.outcome is Outcome.FAILED and "renew-certificate refused" in result.reason, result.reason
    assert engine.posts_to("expired-certificate") == [RC, RC], "diagnose, the refused renewal; nothing after it"
    assert vm.guest.tls12_enabled is False and vm.guest.pending_tls12 is None and not result.rebooted


def test_by_default_a_renewal_that_needs_no_reboot_gets_none(engine: Engine) -> None:
    assert next(spec for spec in SPECS if spec.env == "RDPR_REBOOT_POLICY").default == "when-required"
    settings = engine.with_settings(reboot_policy="when-required")
    result = engine.workflow(engine.request("expired-certificate"), settings=settings).run()
    assert result.outcome is Outcome.REMEDIATED, result.reason
    assert engine.posts_to("expired-certificate") == [RC, RC, RC] and not result.rebooted


def test_a_service_stuck_in_stop_pending_is_left_to_one_reboot(engine: Engine) -> None:
    guest = engine.vm("expired-certificate").guest
    guest.stop_hangs = True
    settings = engine.with_settings(reboot_policy="when-required")
    result = engine.workflow(engine.request("expired-certificate"), settings=settings).run()
    assert engine.posts_to("expired-certificate")[:3] == [RC, RC, RESTART]
    assert result.rebooted and result.outcome is Outcome.REMEDIATED, result.reason


def test_a_domain_controller_store_is_never_renamed_whatever_the_overrides(engine: Engine) -> None:
    guest = engine.vm("keystore-corrupt").guest
    guest.roles = ["domain-controller"]
    result = engine.run("keystore-corrupt", force=True, force_keystore=True)
    assert result.outcome is Outcome.FAILED and "domain-controller" in result.reason, result.reason
    assert not guest.machinekeys_backups


def test_without_the_crp_transport_key_run_command_fails_until_the_agent_restarts(engine: Engine) -> None:
    guest = engine.vm("expired-certificate").guest
    guest.crp_key = None  # a store rename that did not carry it
    result = engine.run("expired-certificate")
    assert result.outcome is Outcome.FAILED and "VMExtensionProvisioningError" in result.reason, result.reason
    assert engine.posts_to("expired-certificate") == [RC] and guest.certificate is not None
