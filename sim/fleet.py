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
    "keystore-corrupt": (
        "Windows cannot create keys in MachineKeys and the listener's key does not open; the store rename would "
        "also set aside .NET's NetFrameworkConfigurationKey container, so it needs forceKeyStore"
    ),
    "firewall-closed": "the built-in Remote Desktop User Mode (TCP-In) rule is disabled on every profile",
    "tls12-disabled": "server-side TLS 1.2 is disabled in SCHANNEL (event 36871)",
    "key-deny": "a deny entry for Everyone on the listener's key file (events 1057, 36870); a grant cannot undo it",
    "key-corrupt": "the listener's key file does not open although its ACL is right; the rest of the store works",
    "policy-certificate": "the listener uses an expired certificate from a Group Policy template (HashType 2)",
    "custom-certificate": "an admin-pinned certificate (HashType 3) expired; a valid successor is in LocalMachine\\My",
    "firewall-policy": (
        "a Group Policy copy of the rule allows RDP on the Domain profile only; local rules do not apply; "
        "the active profile is Public"
    ),
    "firewall-custom-allow": (
        "the built-in rule is disabled, a custom rule allows TCP 3380-3390 from the jump-host subnet"
    ),
    "cached-session": "expired certificate, and a user is logged on over RDP with cached credentials (type 12)",
    "wmi-hung": "expired certificate, and the WMI provider hangs: every CIM call ends at its time limit",
    "linux": "a Linux VM: never touched",
    "deallocated": "a Windows VM that is deallocated",
    "agent-not-ready": "a Windows VM whose guest agent is not ready (Run Command cannot run)",
    "opted-out": "expired certificate, but the VM carries the opt-out tag",
    "out-of-scope": "expired certificate, in a resource group outside the configured scope",
    "never-returns": "expired certificate; after a restart the VM never reports running again",
    # Causes of 0x904 that no repair of ours fixes (docs/causes.md names each one's Microsoft source).
    "brute-force-storm": "thousands of failed logons an hour on an open 3389 exhaust the listener: accepts, is silent",
    "nsg-no-path": (
        "expired certificate, but the NSG allows RDP only from the Bastion subnet: no path from the function"
    ),
    "jit-no-path": "a just-in-time policy protects 3389 and no access was requested: its deny rule blocks the function",
    "port-taken": "another program (javaw) listens on 3389 and answers something that is not RDP",
    "listener-one-adapter": "RDP-Tcp LanAdapter binds the listener to a second adapter: the primary IP refuses",
    "clock-skew": "the guest's clock runs 3 days ahead and it made its certificate by that clock: not yet valid",
    "security-layer-policy": "FIPS on, MinEncryptionLevel 4 and SecurityLayer 0 by policy: the server refuses TLS",
    "cipher-policy": "a cipher-suite order policy lists no suite a current client offers: the TLS handshake fails",
    "client-credssp": "the server is fine; the users' clients fail CredSSP (encryption oracle remediation)",
}

# The scenarios whose cause no repair of ours fixes: the engine names the cause and changes nothing.
CAUSE_SCENARIOS = frozenset(
    {
        "brute-force-storm",
        "nsg-no-path",
        "jit-no-path",
        "port-taken",
        "listener-one-adapter",
        "clock-skew",
        "security-layer-policy",
        "cipher-policy",
        "client-credssp",
    }
)

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


# Well-known SIDs (Microsoft Learn, "Well-known SIDs" and "Security identifiers").
SYSTEM, NETWORK_SERVICE, ADMINISTRATORS = "S-1-5-18", "S-1-5-20", "S-1-5-32-544"
EVERYONE, AUTHENTICATED_USERS, SERVICE = "S-1-1-0", "S-1-5-11", "S-1-5-6"
USERS, LOCAL = "S-1-5-32-545", "S-1-2-0"  # BUILTIN\Users; LOCAL (users who log on locally, services too)
# NT SERVICE\TermService: TermService runs as NETWORK SERVICE with its service SID in the token (Microsoft Learn,
# "Service SIDs"; `sc showsid TermService`).
TERMSERVICE = "S-1-5-80-446051430-1559341753-4161941529-1950928533-810483104"
# NT SERVICE\SessionEnv: a service SID is S-1-5-80- followed by the SHA-1 of the upper-cased service name
# (Microsoft Learn, "Service SIDs"; `sc showsid SessionEnv` prints it).
SESSIONENV = "S-1-5-80-4022436659-1090538466-1613889075-870485073-3428993833"
# The groups in each account's token that an access check compares ACL entries with (Microsoft Learn, "Access
# tokens", "Well-known SIDs"): a deny entry for any of them applies to the account.
# Both tokens also hold BUILTIN\Users (Authenticated Users is a member of it) and LOCAL (Microsoft Learn,
# "Well-known SIDs": S-1-2-0 "users who log on to terminals locally"; services log on locally).
TOKENS = {
    SYSTEM: frozenset({SYSTEM, EVERYONE, AUTHENTICATED_USERS, ADMINISTRATORS, USERS, LOCAL}),
    NETWORK_SERVICE: frozenset({NETWORK_SERVICE, EVERYONE, AUTHENTICATED_USERS, SERVICE, USERS, LOCAL, TERMSERVICE}),
}
# The Azure guest agent's transport certificate for extensions' protected settings: "On an Azure IaaS VM that uses
# extensions ... certificates that have the subject Windows Azure CRP Certificate Generator ... stored in the
# computer's personal certificate store" (Microsoft Learn, "Azure virtual machine extensions and features for
# Windows", learn.microsoft.com/azure/virtual-machines/extensions/features-windows). Run Command is an extension,
# so every VM rdp-remediate works on has one, its CSP key in MachineKeys. The same article says it "can be
# deleted. The Azure VM Agent re-creates certificates if needed", so it does not block a store rename; but
# extensions fail while it is missing until the agent restarts (Microsoft Learn, "Troubleshooting Azure Windows
# VM extension failures"), so the reset carries its key file into the new folder.
CRP_CERTIFICATE = "Windows Azure CRP Certificate Generator"
# The file name of the CRP certificate's key in MachineKeys (a CSP unique container name: a hash, then the
# MachineGuid); the emulator keeps one fixed name.
CRP_KEY_FILE = "0cd5a1b3e4f6a7b8c9d0e1f2a3b4c5d6_0f8fad5b-d9cb-469f-a165-70867728950e"
# .NET's default machine-level key container for protected configuration, a key container with no certificate
# (Microsoft Learn, "Understanding Machine-Level and User-Level RSA Key Containers").
NET_CONFIGURATION_KEY = "NetFrameworkConfigurationKey"
# Windows' own RDP key: container TSSecKeySet1, file named after a fixed hash of it and the MachineGuid.
LISTENER_KEY_PREFIX = "f686aace6942fb7f7ceb231212eef4a4_"


def default_key_readers(os_build: str) -> set[str]:
    r"""Who may read Windows' own RDP key file by default.

    SYSTEM full control and NETWORK SERVICE read are what KB 2001849 restores for TermService. The third
    entry differs by build: Administrators on builds before 17763, NT SERVICE\SessionEnv from 17763 on. The
    latter could not be confirmed from Microsoft material; the engine judges only SYSTEM and NETWORK SERVICE,
    so nothing depends on which one it is.
    """
    build = int(os_build.split(".")[2]) if os_build.count(".") >= 2 else 0
    return {SYSTEM, NETWORK_SERVICE, SESSIONENV if build >= 17763 else ADMINISTRATORS}


@dataclass
class KeyFile:
    """A certificate's private key file: CSP keys in Crypto\\RSA\\MachineKeys, CNG keys in Crypto\\Keys
    (Microsoft Learn, "Key Storage and Retrieval")."""

    name: str
    provider: str = "csp"  # "csp" | "cng"
    readers: set[str] = field(default_factory=set)  # SIDs allowed read
    denies: set[str] = field(default_factory=set)  # SIDs denied read
    opens: bool = True  # False: the file is there, its ACL is right, and the key still does not open

    def readable_by(self, account: str) -> bool:
        """A deny entry wins over any allow entry (Microsoft Learn, "Order of ACEs in a DACL")."""
        token = TOKENS[account]
        return not (self.denies & token) and bool(self.readers & token)

    @property
    def folder(self) -> str:
        return "Keys" if self.provider == "cng" else "MachineKeys"


@dataclass
class FirewallRule:
    """An inbound allow rule for a TCP port."""

    name: str
    port: int
    profiles: str = "Any"  # "Any" or a comma list of Domain, Private, Public
    remote: str = "Any"
    enabled: bool = True
    policy: bool = False  # from Group Policy (the RSOP store), not the local PersistentStore
    last_port: int | None = None  # a range port..last_port (New-NetFirewallRule -LocalPort accepts "3380-3390")

    def covers(self, profile: str) -> bool:
        return self.profiles == "Any" or profile in self.profiles

    def allows(self, port: int) -> bool:
        return self.port <= port <= (self.last_port if self.last_port is not None else self.port)


@dataclass
class Guest:
    """The Windows machine inside a VM, as far as Remote Desktop and the repair scripts can tell."""

    computer_name: str
    certificate: SimCertificate | None  # the listener's certificate (None: none exists)
    # SSLCertificateSHA1HashType (Microsoft Learn, Win32_TSGeneralSetting): 1 Windows' own self-signed
    # certificate, 2 made from a Group Policy certificate template, 3 custom (pinned by an admin).
    hash_type: int = 1
    pin: str = "none"  # where SSLCertificateSHA1Hash is set: "none" | "registry" | "policy"
    certificate_store: str = "Remote Desktop"  # self-signed ones live there, the others in My
    key: KeyFile | None = None  # the listener certificate's key; None: the certificate has no private key
    # Certificates in LocalMachine\My an admin could re-pin a custom listener to (valid, same subject, key
    # readable by NETWORK SERVICE).
    successors: list[SimCertificate] = field(default_factory=list)
    # MachineKeys itself: it exists, SYSTEM and Administrators keep full control (KB 278381), and Windows can
    # create keys in it (False: only a fresh folder helps).
    folder_exists: bool = True
    folder_acl_ok: bool = True
    store_broken: bool = False
    # Other LocalMachine certificates whose keys live in MachineKeys, by name: what a whole-store rename breaks.
    other_keys: list[str] = field(default_factory=list)
    # Key containers in MachineKeys that belong to no certificate (IIS, .NET protected configuration, WMSvc).
    key_containers: list[str] = field(default_factory=list)
    # The CRP transport certificate's key file (in MachineKeys); None once it is gone, until the agent restarts.
    crp_key: str | None = CRP_KEY_FILE
    # A Remote Desktop service that stays in StopPending past any bounded wait (hung sessions).
    stop_hangs: bool = False
    # The listener's settings (HKLM\...\WinStations\RDP-Tcp and fDenyTSConnections).
    deny_connections: bool = False
    security_layer: int = 2  # RDP-Tcp SecurityLayer: 2 TLS (the default)
    user_authentication: int = 1
    roles: list[str] = field(default_factory=list)
    # Firewall: the built-in rule RemoteDesktop-UserMode-In-TCP per profile (local), the profiles' on/off state,
    # which profile is active (the network's category; Public here, which no Microsoft source pins down for Azure
    # VMs, so the scenarios name it), Group Policy copies of the rule and custom allow rules.
    firewall: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FIREWALL_PROFILES, True))
    firewall_enabled: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FIREWALL_PROFILES, True))
    active_profiles: tuple[str, ...] = ("Public",)
    builtin_rule_port: int = 3389
    policy_rules: list[FirewallRule] = field(default_factory=list)
    # Group Policy can stop local rules from applying ("Apply local firewall rules: No"): then only its own count.
    local_rules_apply: bool = True
    custom_rules: list[FirewallRule] = field(default_factory=list)
    tls12_enabled: bool = True
    tls13_enabled: bool = True  # on by default from Windows Server 2022 (build 20348) (Learn: "TLS 1.3")
    active_sessions: int = 0  # logon type 10 (RemoteInteractive)
    cached_sessions: int = 0  # logon type 12 (CachedRemoteInteractive): RDP with cached credentials
    rdp_port: int = 3389
    os_build: str = "10.0.20348.2700"
    dotnet_release: int = 528449  # .NET Framework 4.8 on Windows Server 2022 (Learn: "Determine .NET versions")
    services_running: bool = True  # TermService; False only while a script restarts it
    wmi_hung: bool = False  # a WMI provider that never answers: CIM calls end only at their time limit
    # Changes that take effect at the next boot.
    pending_tls12: bool | None = None
    machinekeys_backups: list[str] = field(default_factory=list)
    backup_times: list[dt.datetime] = field(default_factory=list)
    events: list[tuple[int, dt.datetime]] = field(default_factory=list)  # (event id, time)
    # The causes of 0x904 that no repair of ours fixes (see docs/causes.md for each one's Microsoft source).
    clock_offset_seconds: float = 0.2  # guest clock minus its time source (w32tm /query /status: Phase Offset)
    lan_adapter: int = 0  # RDP-Tcp LanAdapter: 0 listens on every adapter
    min_encryption_level: int = 2  # RDP-Tcp MinEncryptionLevel: 2 client compatible (the default)
    fips: bool = False  # FipsAlgorithmPolicy Enabled
    cipher_suites: list[str] | None = None  # the SSL\00010002 Functions policy; None: no policy sets the order
    port_owner: str | None = None  # a process other than TermService that holds the listener's port
    failed_logons: dict[int, int] = field(default_factory=dict)  # event 4625 in the last hour, by logon type
    listener_exhausted: bool = False  # a logon storm holds every connection slot: new connections get no answer

    def __post_init__(self) -> None:
        if self.key is None and self.certificate is not None:
            self.key = self.own_key()

    def own_key(self) -> KeyFile:
        # The suffix is the MachineGuid (HKLM\\SOFTWARE\\Microsoft\\Cryptography); stable per machine here.
        machine_guid = str(uuid.uuid5(uuid.NAMESPACE_DNS, self.computer_name))
        return KeyFile(LISTENER_KEY_PREFIX + machine_guid, readers=default_key_readers(self.os_build))

    @property
    def certificate_pinned(self) -> bool:
        return self.pin != "none"

    @property
    def key_usable(self) -> bool:
        """The listener (TermService, as NETWORK SERVICE) can use its certificate's private key."""
        key = self.key
        return (
            self.certificate is not None
            and key is not None
            and key.opens
            and key.readable_by(NETWORK_SERVICE)
            and key.readable_by(SYSTEM)
        )

    @property
    def key_store(self) -> str:
        """A one-word summary for the emulator's state view."""
        if not self.folder_exists or self.store_broken:
            return "broken"
        return "ok" if self.key_usable or self.certificate is None else "key-unusable"

    @property
    def sessions(self) -> int:
        return self.active_sessions + self.cached_sessions

    def allow_paths(self) -> list[FirewallRule]:
        """Enabled allow rules for the listener's port on an active profile, as the active store merges them."""
        rules = [r for r in self.policy_rules if r.enabled]
        if self.local_rules_apply:
            builtin = FirewallRule(
                "RemoteDesktop-UserMode-In-TCP", self.builtin_rule_port, _profiles(self.firewall), enabled=True
            )
            rules += [r for r in self.custom_rules if r.enabled] + ([builtin] if builtin.profiles else [])
        return [r for r in rules if r.allows(self.rdp_port) and any(r.covers(p) for p in self.active_profiles)]

    @property
    def firewall_open(self) -> bool:
        """The listener's port gets through: the firewall is off on an active profile, or an allow path exists."""
        if any(not self.firewall_enabled[p] for p in self.active_profiles):
            return True
        return bool(self.allow_paths())

    def new_certificate(self, now: dt.datetime, days: int = 180) -> SimCertificate | None:
        """What SessionEnv/TermService do without a usable certificate: a new self-signed one, when Windows can
        create its key (its container reused when it opens, else a new file needs a working store)."""
        if self.store_broken or not self.folder_exists or (self.key is not None and not self.key.opens):
            self.events.append((1057, now))
            self.certificate = None
            return None
        self.certificate = rdp_certificate(self.computer_name, now - dt.timedelta(minutes=1), now + days * DAY)
        self.hash_type, self.pin, self.certificate_store = 1, "none", "Remote Desktop"
        if self.key is None or self.key.provider != "csp" or not self.key.name.startswith(LISTENER_KEY_PREFIX):
            self.key = self.own_key()
        return self.certificate


def _profiles(enabled: dict[str, bool]) -> str:
    on = [p for p in FIREWALL_PROFILES if enabled[p]]
    return "Any" if len(on) == len(FIREWALL_PROFILES) else ",".join(on)


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
    # The NIC's NSG rules for the RDP port above Azure's defaults ({name, priority, access, source}) and whether a
    # just-in-time policy protects the RDP port (sim.network serves both, on the emulator's RDP port).
    nsg_rules: list[dict[str, Any]] = field(default_factory=list)
    jit_rdp: bool = False

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
    if scenario in ("expired-certificate", "opted-out", "out-of-scope", "never-returns", "cached-session", "wmi-hung"):
        guest.certificate = expired
        guest.events.append((1058, now - 2 * dt.timedelta(hours=1)))
    if scenario == "expiring-soon":
        guest.certificate = rdp_certificate(guest.computer_name, now - 177 * DAY, now + 3 * DAY)
    _apply_guest_scenario(guest, scenario, now)
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
    _apply_cause_scenario(vm, scenario, now)


def _apply_cause_scenario(vm: VirtualMachine, scenario: str, now: dt.datetime) -> None:
    """The causes no repair fixes: the evidence each leaves in the guest and in Azure's network rules."""
    guest = vm.guest
    if scenario == "brute-force-storm":
        guest.failed_logons = {10: 3000, 3: 1200}
        guest.listener_exhausted = True
    if scenario == "nsg-no-path":
        guest.certificate = rdp_certificate(guest.computer_name, now - 200 * DAY, now - 20 * DAY)
        guest.events.append((1058, now - dt.timedelta(hours=2)))
        vm.nsg_rules = [
            {"name": "AllowRdpFromBastion", "priority": 100, "access": "Allow", "source": "10.0.250.0/26"},
            {"name": "DenyRdpInbound", "priority": 110, "access": "Deny", "source": "*"},
        ]
    if scenario == "jit-no-path":
        # Defender for Cloud writes a deny rule for each JIT port (Learn: "Understand just-in-time VM access").
        vm.nsg_rules = [{"name": "SecurityCenter-JITRule_-1785712236_A45E8A95", "priority": 1000, "access": "Deny"}]
        vm.jit_rdp = True
    if scenario == "port-taken":
        guest.port_owner = "javaw"
    if scenario == "listener-one-adapter":
        guest.lan_adapter = 2
    if scenario == "clock-skew":
        ahead = 3 * DAY
        guest.clock_offset_seconds = ahead.total_seconds()
        guest.certificate = rdp_certificate(guest.computer_name, now + ahead, now + ahead + 180 * DAY)
    if scenario == "security-layer-policy":
        guest.fips, guest.min_encryption_level, guest.security_layer = True, 4, 0
    if scenario == "cipher-policy":
        guest.cipher_suites = ["TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_RC4_128_SHA"]


def _apply_guest_scenario(guest: Guest, scenario: str, now: dt.datetime) -> None:
    """The key store, certificate owner, firewall, session and WMI parts of a scenario."""
    key = guest.key
    assert key is not None
    recently = now - dt.timedelta(hours=3)
    if scenario == "keystore-acl":
        key.readers = {SYSTEM, ADMINISTRATORS}  # NETWORK SERVICE lost its read (KB 2001849)
        guest.events += [(1057, recently), (36870, recently)]
    if scenario == "key-deny":
        key.denies = {EVERYONE}
        guest.events += [(1057, recently), (36870, recently)]
    if scenario in ("keystore-corrupt", "key-corrupt"):
        key.opens = False
        guest.store_broken = scenario == "keystore-corrupt"
        if scenario == "keystore-corrupt":
            guest.key_containers = [NET_CONFIGURATION_KEY]
        guest.events += [(1057, recently), (36870, recently)]
    if scenario == "firewall-closed":
        guest.firewall = dict.fromkeys(FIREWALL_PROFILES, False)
    if scenario == "policy-certificate":
        guest.certificate = rdp_certificate(guest.computer_name, now - 400 * DAY, now - 5 * DAY)
        guest.hash_type, guest.pin, guest.certificate_store = 2, "policy", "My"
        guest.events.append((1058, recently))
    if scenario == "custom-certificate":
        guest.certificate = rdp_certificate(guest.computer_name, now - 400 * DAY, now - 2 * DAY)
        guest.hash_type, guest.pin, guest.certificate_store = 3, "registry", "My"
        key.name = "5d1bc0f4a2c3e4a1b6a0d2c9e8f7a6b5_" + key.name.split("_", 1)[1]
        guest.successors = [rdp_certificate(guest.computer_name, now - 30 * DAY, now + 335 * DAY)]
    if scenario == "firewall-policy":
        guest.policy_rules = [FirewallRule("RemoteDesktop-UserMode-In-TCP", 3389, "Domain", policy=True)]
        guest.local_rules_apply = False
    if scenario == "firewall-custom-allow":
        guest.firewall = dict.fromkeys(FIREWALL_PROFILES, False)
        guest.custom_rules = [FirewallRule("RDP from jump hosts", 3380, "Any", remote="10.20.0.0/24", last_port=3390)]
    if scenario == "cached-session":
        guest.cached_sessions = 1
    if scenario == "wmi-hung":
        guest.wmi_hung = True


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
