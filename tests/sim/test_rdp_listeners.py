"""The emulator's per-VM RDP listeners and the real probe agree on every scenario, and follow the guest live."""

from __future__ import annotations

import datetime as dt
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remediate.probe import ProbeResult, ProbeStatus, probe, probe_many
from sim.fleet import SCENARIOS, Fleet, VirtualMachine, demo_fleet, utcnow
from sim.rdp import RdpListeners

# What the probe must see for a VM that starts in each scenario of `sim.fleet`.
EXPECTED: dict[str, ProbeStatus] = {
    "healthy": ProbeStatus.HEALTHY,
    "expired-certificate": ProbeStatus.CERTIFICATE_EXPIRED,
    "expiring-soon": ProbeStatus.EXPIRING_SOON,
    "keystore-acl": ProbeStatus.NO_CERTIFICATE,
    "keystore-corrupt": ProbeStatus.NO_CERTIFICATE,
    "firewall-closed": ProbeStatus.REFUSED,
    "tls12-disabled": ProbeStatus.TLS_HANDSHAKE_FAILED,
    "linux": ProbeStatus.REFUSED,  # no listener at all
    "deallocated": ProbeStatus.REFUSED,
    "agent-not-ready": ProbeStatus.HEALTHY,  # the agent matters to Run Command, not to RDP
    "opted-out": ProbeStatus.CERTIFICATE_EXPIRED,
    "out-of-scope": ProbeStatus.CERTIFICATE_EXPIRED,
    "never-returns": ProbeStatus.CERTIFICATE_EXPIRED,
    "key-deny": ProbeStatus.NO_CERTIFICATE,
    "key-corrupt": ProbeStatus.NO_CERTIFICATE,
    "custom-certificate": ProbeStatus.CERTIFICATE_EXPIRED,
    "policy-certificate": ProbeStatus.CERTIFICATE_EXPIRED,
    "firewall-policy": ProbeStatus.REFUSED,
    "firewall-custom-allow": ProbeStatus.HEALTHY,
    "cached-session": ProbeStatus.CERTIFICATE_EXPIRED,
    "wmi-hung": ProbeStatus.CERTIFICATE_EXPIRED,
    "brute-force-storm": ProbeStatus.NO_ANSWER,  # accepted, then silent
    "nsg-no-path": ProbeStatus.NO_ANSWER,  # what a loopback listener can do for a dropped SYN
    "jit-no-path": ProbeStatus.NO_ANSWER,
    "port-taken": ProbeStatus.NOT_RDP,
    "listener-one-adapter": ProbeStatus.REFUSED,
    "clock-skew": ProbeStatus.CERTIFICATE_NOT_YET_VALID,
    "security-layer-policy": ProbeStatus.TLS_NOT_OFFERED,
    "cipher-policy": ProbeStatus.TLS_HANDSHAKE_FAILED,
    "client-credssp": ProbeStatus.HEALTHY,
}


Change = Callable[[VirtualMachine], object]


@pytest.fixture
def now() -> dt.datetime:
    return utcnow()


@pytest.fixture
def fleet(now: dt.datetime) -> Fleet:
    return demo_fleet(now=now)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def listeners(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RdpListeners]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # so the test can see the certificate files go
    for attempt in range(3):  # another test may grab the released port on one of the addresses meanwhile
        rdp = RdpListeners(fleet, _free_port())
        try:
            rdp.start()
            break
        except OSError:
            if attempt == 2:
                raise
    yield rdp
    rdp.stop()


def _probe(rdp: RdpListeners, vm: VirtualMachine, now: dt.datetime) -> ProbeResult:
    return probe(*rdp.address(vm), timeout=5.0, now=lambda: now)


def _vm(fleet: Fleet, scenario: str) -> VirtualMachine:
    (vm,) = fleet.by_scenario(scenario)
    return vm


def test_every_scenario_probes_as_expected(fleet: Fleet, listeners: RdpListeners, now: dt.datetime) -> None:
    assert set(EXPECTED) == set(SCENARIOS), "a new scenario needs its expected probe status here"
    vms = list(fleet)

    results = probe_many([listeners.address(vm) for vm in vms], timeout=5.0, now=lambda: now)

    assert {vm.scenario: r.status for vm, r in zip(vms, results, strict=True)} == EXPECTED
    for vm, result in zip(vms, results, strict=True):
        if result.certificate is not None:
            assert vm.guest.certificate is not None
            assert result.certificate.thumbprint_sha1 == vm.guest.certificate.thumbprint
            assert result.certificate.subject == f"CN={vm.guest.computer_name}"
            assert result.selected_protocol == "PROTOCOL_HYBRID"  # offered by the probe, preferred by Windows


def test_dates_and_failures_read_like_the_scenarios(fleet: Fleet, listeners: RdpListeners, now: dt.datetime) -> None:
    expired = _probe(listeners, _vm(fleet, "expired-certificate"), now)
    assert expired.certificate is not None and expired.certificate.days_remaining == -20
    assert expired.detail.startswith("certificate expired 20 days ago")
    soon = _probe(listeners, _vm(fleet, "expiring-soon"), now)
    assert soon.certificate is not None and soon.certificate.days_remaining == 3
    keystore = _probe(listeners, _vm(fleet, "keystore-corrupt"), now)
    assert keystore.negotiation_failure == "SSL_CERT_NOT_ON_SERVER"
    tls_off = _probe(listeners, _vm(fleet, "tls12-disabled"), now)
    assert tls_off.selected_protocol == "PROTOCOL_HYBRID" and "handshake failure" in tls_off.detail


def test_renewed_certificate_shows_on_the_next_probe(fleet: Fleet, listeners: RdpListeners, now: dt.datetime) -> None:
    vm = _vm(fleet, "expired-certificate")
    assert vm.guest.certificate is not None
    old = vm.guest.certificate.thumbprint

    with fleet.lock:
        new = vm.guest.new_certificate(now)
    assert new is not None
    result = _probe(listeners, vm, now)

    assert result.status == ProbeStatus.HEALTHY
    assert result.certificate is not None
    assert result.certificate.thumbprint_sha1 == new.thumbprint != old


@pytest.mark.parametrize(
    ("scenario", "repair"),
    [
        ("firewall-closed", lambda vm: vm.guest.firewall.update(Domain=True, Private=True, Public=True)),
        ("keystore-acl", lambda vm: vm.guest.key.readers.add("S-1-5-20")),
        ("tls12-disabled", lambda vm: setattr(vm.guest, "tls12_enabled", True)),
        ("deallocated", lambda vm: setattr(vm, "power_state", "running")),
    ],
)
def test_repairs_take_effect_at_once(
    fleet: Fleet, listeners: RdpListeners, now: dt.datetime, scenario: str, repair: Change
) -> None:
    vm = _vm(fleet, scenario)
    assert _probe(listeners, vm, now).status == EXPECTED[scenario]

    with fleet.lock:
        repair(vm)

    assert _probe(listeners, vm, now).status == ProbeStatus.HEALTHY


@pytest.mark.parametrize(
    ("breakage", "status"),
    [
        (lambda vm: setattr(vm.guest, "services_running", False), ProbeStatus.REFUSED),
        (lambda vm: vm.guest.firewall.update(Public=False), ProbeStatus.REFUSED),
        (lambda vm: setattr(vm, "power_state", "stopped"), ProbeStatus.REFUSED),
        (lambda vm: setattr(vm.guest, "certificate", None), ProbeStatus.NO_CERTIFICATE),
        (lambda vm: setattr(vm.guest, "tls12_enabled", False), ProbeStatus.TLS_HANDSHAKE_FAILED),
    ],
    ids=["termservice-stopped", "one-firewall-profile-closed", "stopped", "certificate-deleted", "tls12-off"],
)
def test_breakages_take_effect_at_once(
    fleet: Fleet, listeners: RdpListeners, now: dt.datetime, breakage: Change, status: ProbeStatus
) -> None:
    vm = _vm(fleet, "healthy")
    assert _probe(listeners, vm, now).status == ProbeStatus.HEALTHY

    with fleet.lock:
        breakage(vm)

    assert _probe(listeners, vm, now).status == status


def test_connections_are_recorded(fleet: Fleet, listeners: RdpListeners, now: dt.datetime) -> None:
    _probe(listeners, _vm(fleet, "healthy"), now)
    _probe(listeners, _vm(fleet, "firewall-closed"), now)
    _probe(listeners, _vm(fleet, "keystore-acl"), now)

    assert [(e.vm_name, e.outcome) for e in listeners.events] == [
        ("vm-healthy", "tls"),
        ("vm-firewall-closed", "refused"),
        ("vm-keystore-acl", "no-certificate"),
    ]


def test_stop_closes_every_listener_and_removes_the_key_files(
    fleet: Fleet, listeners: RdpListeners, now: dt.datetime, tmp_path: Path
) -> None:
    vm = _vm(fleet, "healthy")
    assert _probe(listeners, vm, now).status == ProbeStatus.HEALTHY
    assert list(tmp_path.glob("sim-rdp-*/*.key")), "the served certificate's key was written for TLS"

    listeners.stop()
    listeners.stop()  # harmless twice

    assert _probe(listeners, vm, now).status == ProbeStatus.REFUSED
    assert not list(tmp_path.glob("sim-rdp-*"))


def test_start_twice_is_an_error(listeners: RdpListeners) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        listeners.start()


def test_an_address_already_in_use_fails_start_cleanly(fleet: Fleet, listeners: RdpListeners) -> None:
    other = RdpListeners(fleet, listeners.port)

    with pytest.raises(OSError):
        other.start()
    other.stop()  # nothing left to stop: start() already cleaned up
