"""The emulator's world: virtual machines, their NICs and the Windows guest inside each one.

Everything the emulated ARM APIs answer and everything the simulated guest scripts change lives here, so
the ARM server (`sim.server`), the guest (`sim.guest`) and the RDP listeners (`sim.rdp`) agree on one truth.
A `Fleet` is guarded by one lock: take `fleet.lock` around any read-modify-write.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.certs import SimCertificate, rdp_certificate

DAY = dt.timedelta(days=1)

# Every scenario a VM can start in, with what it means. `sim.guest` and the tests rely on these names.
SCENARIOS: dict[str, str] = {
    "healthy": "RDP works: valid certificate, key store fine, firewall open, TLS 1.2 on",
    "expired-certificate": "the listener's self-signed certificate expired 20 days ago (event 1058)",
    "expiring-soon": "the certificate expires in 3 days (proactive renewal)",
    "keystore-acl": "MachineKeys ACLs are wrong; an ACL repair fixes it (events 1057, 36870)",
    "keystore-corrupt": "MachineKeys is corrupt beyond ACL repair; only the rename fixes it",
    "firewall-closed": "the Remote Desktop firewall rule group is disabled on every profile",
    "tls12-disabled": "server-side TLS 1.2 is disabled in SCHANNEL (event 36871)",
    "linux": "a Linux VM: never touched",
    "deallocated": "a Windows VM that is deallocated",
    "agent-not-ready": "a Windows VM whose guest agent is not ready (Run Command cannot run)",
    "opted-out": "expired certificate, but the VM carries the opt-out tag",
    "out-of-scope": "expired certificate, in a resource group outside the configured scope",
    "never-returns": "expired certificate; after a restart the VM never reports running again",
}

# Named mixes for generated fleets: scenario -> weight.
MIXES: dict[str, dict[str, float]] = {
    "realistic": {
        "healthy": 88,
        "expired-certificate": 3,
        "expiring-soon": 2,
        "keystore-acl": 1,
        "keystore-corrupt": 0.5,
        "firewall-closed": 0.5,
        "tls12-disabled": 0.5,
        "linux": 3,
        "deallocated": 1,
        "agent-not-ready": 0.5,
    },
    "broken": {
        "expired-certificate": 40,
        "keystore-acl": 25,
        "keystore-corrupt": 10,
        "firewall-closed": 15,
        "tls12-disabled": 10,
    },
    "healthy": {"healthy": 1},
}

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
OTHER_SUBSCRIPTION = "00000000-0000-4000-8000-000000000002"
RESOURCE_GROUP = "rg-prod"
OUT_OF_SCOPE_GROUP = "rg-sandbox"
OPT_OUT_TAG = ("rdp-remediate", "off")
FIREWALL_PROFILES = ("Domain", "Private", "Public")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Guest:
    """The Windows machine inside a VM, as far as Remote Desktop and the repair scripts can tell."""

    computer_name: str
    certificate: SimCertificate | None  # the listener's certificate (None: none exists)
    key_store: str = "ok"  # "ok" | "acl-broken" (an ACL repair fixes it) | "corrupt" (only a rename does)
    firewall: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FIREWALL_PROFILES, True))
    tls12_enabled: bool = True
    active_sessions: int = 0
    rdp_port: int = 3389
    os_build: str = "10.0.20348.2700"
    services_running: bool = True  # TermService; False only while a script restarts it
    # Changes that take effect at the next boot.
    pending_tls12: bool | None = None
    pending_keystore_reset: bool = False
    machinekeys_backups: list[str] = field(default_factory=list)
    events: list[tuple[int, dt.datetime]] = field(default_factory=list)  # (event id, time)
    # The certificate's private key is gone (MachineKeys was reset): Windows replaces it at the next start.
    key_missing: bool = False
    # A "corrupt" key store whose ACLs were already repaired: only the MachineKeys reset helps now.
    acl_repaired: bool = False
    # An admin pinned the listener to this certificate (SSLCertificateSHA1Hash); the repair leaves a valid pin.
    certificate_pinned: bool = False

    @property
    def key_usable(self) -> bool:
        """The listener can use its certificate's private key."""
        return self.certificate is not None and self.key_store == "ok" and not self.key_missing

    @property
    def firewall_open(self) -> bool:
        """The Remote Desktop rule group is enabled on every profile (the repair enables all three)."""
        return all(self.firewall.values())

    def new_certificate(self, now: dt.datetime, days: int = 180) -> SimCertificate:
        """What TermService does when it starts without a usable certificate and the key store works."""
        self.certificate = rdp_certificate(self.computer_name, now - dt.timedelta(minutes=1), now + days * DAY)
        self.key_missing = False
        self.certificate_pinned = False
        return self.certificate


@dataclass
class VirtualMachine:
    subscription_id: str
    resource_group: str
    name: str
    scenario: str
    os_type: str  # "Windows" | "Linux"
    guest: Guest
    private_ip: str  # a loopback address 127.x.y.z: the simulated RDP listener binds to it
    location: str = "westeurope"
    vm_size: str = "Standard_D2s_v5"
    power_state: str = "running"  # running | stopping | stopped | starting | deallocated
    agent_ready: bool = True
    never_returns: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    vm_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    run_command_busy: bool = False  # a Run Command is executing: a second one gets 409
    # --- What ARM reports, which can differ from the guest's truth (sim.operations keeps these) ---
    busy_until: float = 0.0  # epoch: Run Command still answers 409 "in progress" until then
    agent_time: float = field(default_factory=time.time)  # epoch of the agent's last status report
    agent_linger_until: float = 0.0  # epoch: the agent's old Ready is still reported until then
    reported_power: str | None = None  # the platform's power state while the guest reboots (None: the truth)
    # Per-VM overrides of the run's `sim.realism.Realism` (None: the run's choice).
    answer_style: str | None = None
    secondary_nics: int | None = None

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{self.name}"
        )

    @property
    def nic_name(self) -> str:
        return f"{self.name}-nic"

    @property
    def nic_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Network/networkInterfaces/{self.nic_name}"
        )

    @property
    def key(self) -> str:
        return self.resource_id.lower()

    def nics(self, secondary: int) -> list[Nic]:
        """The VM's NICs in the order ARM lists them: `secondary` NICs first, then the primary one.

        Azure does not promise the primary NIC first (`networkProfile.networkInterfaces[].properties.primary`
        marks it), nor the primary IP configuration first within a NIC. The secondary addresses are loopback
        addresses no listener binds, so a probe sent to one of them fails.
        """
        octets = self.private_ip.split(".")[2:]
        extras = [
            Nic(f"{self.name}-nic{i + 2}", False, [IpConfig("ipconfig1", _unused(250 - i, octets), True)])
            for i in range(secondary)
        ]
        configs = [IpConfig("ipconfig1", self.private_ip, True)]
        if secondary:
            configs.insert(0, IpConfig("ipconfig-secondary", _unused(251, octets), False))
        return [*extras, Nic(self.nic_name, True, configs)]


@dataclass(frozen=True)
class IpConfig:
    name: str
    address: str
    primary: bool


@dataclass(frozen=True)
class Nic:
    name: str
    primary: bool
    ip_configurations: list[IpConfig]


def _unused(second_octet: int, last: list[str]) -> str:
    """A loopback address that no simulated RDP listener binds (VMs use 127.0.x.y for small fleets)."""
    return f"127.{second_octet}.{last[0]}.{last[1]}"


class Fleet:
    """All VMs of the emulator, indexed by lower-cased resource id."""

    def __init__(self, vms: list[VirtualMachine]) -> None:
        self.lock = threading.RLock()
        self._vms: dict[str, VirtualMachine] = {}
        for vm in vms:
            if vm.key in self._vms:
                raise ValueError(f"duplicate VM {vm.resource_id}")
            self._vms[vm.key] = vm

    def __iter__(self) -> Iterator[VirtualMachine]:
        return iter(list(self._vms.values()))

    def __len__(self) -> int:
        return len(self._vms)

    def get(self, resource_id: str) -> VirtualMachine | None:
        return self._vms.get(resource_id.lower().rstrip("/"))

    def by_scenario(self, scenario: str) -> list[VirtualMachine]:
        return [vm for vm in self._vms.values() if vm.scenario == scenario]

    @property
    def subscription_ids(self) -> list[str]:
        return sorted({vm.subscription_id for vm in self._vms.values()})

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for vm in self._vms.values():
            counts[vm.scenario] = counts.get(vm.scenario, 0) + 1
        return {"vms": len(self._vms), "scenarios": dict(sorted(counts.items()))}

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "subscription": vm.subscription_id,
                "resourceGroup": vm.resource_group,
                "name": vm.name,
                "scenario": vm.scenario,
                "tags": vm.tags,
            }
            for vm in self
        ]


def loopback_address(index: int) -> str:
    """A distinct loopback address per VM index: 127.0.0.2, 127.0.0.3, ... (127.0.0.1 is the emulator's)."""
    host = index + 2
    if host >= 1 << 24:
        raise ValueError("too many VMs for distinct loopback addresses")
    return f"127.{host >> 16}.{(host >> 8) & 255}.{host & 255}"


def make_vm(
    scenario: str,
    index: int,
    name: str | None = None,
    now: dt.datetime | None = None,
    subscription_id: str = SUBSCRIPTION,
    resource_group: str = RESOURCE_GROUP,
) -> VirtualMachine:
    """One VM in the given scenario. Deterministic except for certificate serials and the VM uuid."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    now = now or utcnow()
    name = name or f"vm{index:05d}"
    computer = name.upper()[:15]
    guest = Guest(computer_name=computer, certificate=rdp_certificate(computer, now - 160 * DAY, now + 200 * DAY))
    vm = VirtualMachine(subscription_id, resource_group, name, scenario, "Windows", guest, loopback_address(index))
    _apply_scenario(vm, scenario, now)
    return vm


def _apply_scenario(vm: VirtualMachine, scenario: str, now: dt.datetime) -> None:
    guest = vm.guest
    expired = rdp_certificate(guest.computer_name, now - 200 * DAY, now - 20 * DAY)
    if scenario in ("expired-certificate", "opted-out", "out-of-scope", "never-returns"):
        guest.certificate = expired
        guest.events.append((1058, now - 2 * dt.timedelta(hours=1)))
    if scenario == "expiring-soon":
        guest.certificate = rdp_certificate(guest.computer_name, now - 177 * DAY, now + 3 * DAY)
    if scenario == "keystore-acl":
        guest.key_store = "acl-broken"
        guest.events += [(1057, now - dt.timedelta(hours=3)), (36870, now - dt.timedelta(hours=3))]
    if scenario == "keystore-corrupt":
        guest.key_store = "corrupt"
        guest.events += [(1057, now - dt.timedelta(hours=5)), (36870, now - dt.timedelta(hours=5))]
    if scenario == "firewall-closed":
        guest.firewall = dict.fromkeys(FIREWALL_PROFILES, False)
    if scenario == "tls12-disabled":
        guest.tls12_enabled = False
        guest.events.append((36871, now - dt.timedelta(hours=1)))
    if scenario == "linux":
        vm.os_type = "Linux"
    if scenario == "deallocated":
        vm.power_state = "deallocated"
    if scenario == "agent-not-ready":
        vm.agent_ready = False
    if scenario == "opted-out":
        vm.tags[OPT_OUT_TAG[0]] = OPT_OUT_TAG[1]
    if scenario == "out-of-scope":
        vm.resource_group = OUT_OF_SCOPE_GROUP
    if scenario == "never-returns":
        vm.never_returns = True


def demo_fleet(now: dt.datetime | None = None) -> Fleet:
    """One VM per scenario, named after it (the demo and most integration tests)."""
    return Fleet([make_vm(scenario, i, name=f"vm-{scenario}", now=now) for i, scenario in enumerate(SCENARIOS)])


def generated_fleet(
    count: int,
    mix: str = "realistic",
    seed: int = 7,
    now: dt.datetime | None = None,
    resource_groups: int = 10,
) -> Fleet:
    """`count` VMs spread over `resource_groups` groups, scenarios drawn from a named mix."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; known: {', '.join(MIXES)}")
    rng = random.Random(seed)
    scenarios, weights = zip(*MIXES[mix].items(), strict=True)
    now = now or utcnow()
    vms = []
    for i in range(count):
        scenario = rng.choices(scenarios, weights)[0]
        vms.append(make_vm(scenario, i, now=now, resource_group=f"rg-{i % resource_groups:02d}"))
    return Fleet(vms)


def load_fleet(path: Path, now: dt.datetime | None = None) -> Fleet:
    """A fleet from a JSON file: `[{"name", "scenario", "resourceGroup"?, "subscription"?, "tags"?}]`."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of VMs")  # noqa: TRY004 - bad file content
    vms = []
    for i, entry in enumerate(entries):
        vm = make_vm(
            entry["scenario"],
            i,
            name=entry["name"],
            now=now,
            subscription_id=entry.get("subscription", SUBSCRIPTION),
            resource_group=entry.get("resourceGroup", RESOURCE_GROUP),
        )
        vm.tags.update(entry.get("tags", {}))
        vms.append(vm)
    return Fleet(vms)
