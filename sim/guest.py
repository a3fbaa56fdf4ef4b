"""The simulated Windows guest: what each rdp-remediate guest script does to a VM, and what it prints.

The emulator's Run Command hands the script text it received to `run_script`. Like Azure, it just runs it:
the script is identified by its `$ScriptName = '...'` line, its parameters are bound the way PowerShell binds
them (an unknown name or a bad value is a PowerShell error on stderr and no JSON), and the output is a few
progress lines then the JSON summary of `remediate/guest/contract.schema.json` as the last line. Each script's
effect on `Guest` lives in one function here. The caller holds the fleet's lock and applies the 4096-byte tail.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.fleet import DAY, FIREWALL_PROFILES, Guest, VirtualMachine

RSA_FOLDER = r"C:\ProgramData\Microsoft\Crypto\RSA"
MACHINEKEYS = RSA_FOLDER + r"\MachineKeys"
LOG_ROOT = r"C:\ProgramData\rdp-remediate"
REMOTE_DESKTOP_STORE = "Cert:\\LocalMachine\\Remote Desktop"
LISTENER_KEY_PREFIX = "f686aace6942fb7f7ceb231212eef4a4_"  # TSSecKeySet1, followed by the machine GUID
# The firewall rules enable-firewall-rule enables (by Name): the User Mode pair, never the group's Shadow rule.
RDP_RULES = ("RemoteDesktop-UserMode-In-TCP",)
EVENT_IDS = ("1057", "1058", "36870", "36871")
# Where Run Command writes the script it runs; PowerShell names the script by this path in its errors.
_SCRIPT_PATH = r"C:\Packages\Plugins\Microsoft.CPlat.Core.RunCommandWindows\1.1.18\Downloads\script0.ps1"
_NAME_LINE = re.compile(r"^\$ScriptName\s*=\s*'(?P<name>[^']*)'\s*$", re.MULTILINE)
_VERSION_LINE = re.compile(r"^\$ScriptVersion\s*=\s*'(?P<version>[^']*)'\s*$", re.MULTILINE)
# The scripts' Write-Summary limits: 20 entries a list, 300 characters an entry, 4000 bytes a line.
_MAX_ITEMS, _MAX_TEXT, _MAX_LINE = 20, 300, 4000


@dataclass(frozen=True)
class ScriptOutput:
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Parameter:
    """One parameter of a script's param() block, as PowerShell binds a string to it."""

    name: str
    default: str
    choices: tuple[str, ...] = ()  # [ValidateSet(...)] [string]
    int_range: tuple[int, int] | None = None  # [ValidateRange(lo, hi)] [int]


_DETECT_ONLY = Parameter("DetectOnly", "false", choices=("true", "false"))
_FORCE = Parameter("Force", "false", choices=("true", "false"))
_EXPIRY_WARNING_DAYS = Parameter("ExpiryWarningDays", "30", int_range=(0, 3650))

# Each script's param() block (a test keeps this equal to the scripts).
PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "diagnose": (_DETECT_ONLY, _EXPIRY_WARNING_DAYS),
    "renew-certificate": (_DETECT_ONLY, _FORCE, _EXPIRY_WARNING_DAYS),
    "repair-machinekeys": (_DETECT_ONLY,),
    "reset-machinekeys": (_DETECT_ONLY,),
    "enable-firewall-rule": (_DETECT_ONLY,),
    "enable-tls12": (_DETECT_ONLY,),
}


class _BindingError(Exception):
    """PowerShell refused the parameters before the script ran."""

    def __init__(self, message: str, category: str, error_id: str) -> None:
        super().__init__(message)
        self.message, self.category, self.error_id = message, category, error_id


@dataclass
class _Run:
    """One execution of a script: its inputs and what it reports."""

    script: str
    version: str
    vm: VirtualMachine
    now: dt.datetime
    args: dict[str, str | int]
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    progress: list[str] = field(default_factory=list)
    changed: bool = False
    reboot_required: bool = False

    @property
    def guest(self) -> Guest:
        return self.vm.guest

    @property
    def detect_only(self) -> bool:
        return self.args["DetectOnly"] == "true"

    def step(self, message: str) -> None:
        self.progress.append(f"[{self.script}] {message}")


# --- entry points --------------------------------------------------------------------------------------------


def run_script(vm: VirtualMachine, script: str, parameters: dict[str, str], now: dt.datetime) -> ScriptOutput:
    """Run a guest script the way PowerShell on `vm` would. The caller holds the fleet's lock."""
    name_match = _NAME_LINE.search(script)
    name = name_match.group("name") if name_match else None
    if name not in _SCRIPTS:
        return ScriptOutput("", _not_recognized(script))
    try:
        args = _bind(name, parameters)
    except _BindingError as error:
        return ScriptOutput("", _powershell_error(error.message, error.category, error.error_id))
    version_match = _VERSION_LINE.search(script)
    run = _Run(name, version_match.group("version") if version_match else "", vm, now, args)
    run.step(f"{run.version} on {vm.guest.computer_name}, DetectOnly={args['DetectOnly']}")
    findings = _SCRIPTS[name](run)
    summary = {
        "script": name,
        "version": run.version,
        "detect_only": run.detect_only,
        "changed": run.changed,
        "reboot_required": run.reboot_required,
        "actions": run.actions,
        "findings": findings,
        "errors": run.errors,
    }
    return ScriptOutput("\n".join([*run.progress, summary_line(summary)]) + "\n", "")


def boot(vm: VirtualMachine, now: dt.datetime) -> None:
    """Windows starting: pending settings apply, sessions are gone, TermService starts.

    TermService replaces a missing or keyless certificate when the key store works (event 1057 when it does
    not), but it does NOT replace an expired one (event 1058): that is the bug behind error 0x904.
    """
    guest = vm.guest
    if guest.pending_tls12 is not None:
        guest.tls12_enabled, guest.pending_tls12 = guest.pending_tls12, None
    if guest.pending_keystore_reset:
        _reset_key_store(guest)
        guest.pending_keystore_reset = False
    guest.services_running = True
    guest.active_sessions = 0
    if (guest.certificate is None or guest.key_missing) and not guest.certificate_pinned:
        if guest.key_store == "ok":
            guest.new_certificate(now)
        else:
            guest.events.append((1057, now))
    elif guest.certificate is not None and guest.certificate.expired(now):
        guest.events.append((1058, now))


def summary_line(summary: dict[str, Any]) -> str:
    """The summary as the scripts' Write-Summary prints it: compact JSON within the contract's limits."""
    dropped = 0
    for key in ("actions", "errors"):
        items = [text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..." for text in summary[key]]
        dropped += max(0, len(items) - _MAX_ITEMS)
        summary[key] = items[:_MAX_ITEMS]
    while True:
        if dropped:
            summary["truncated"] = dropped
        line = json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
        victim = summary["actions"] or summary["errors"]
        if len(line.encode("utf-8")) <= _MAX_LINE or not victim:
            return line
        victim.pop()
        dropped += 1


# --- the scripts -----------------------------------------------------------------------------------------------


def _diagnose(run: _Run) -> dict[str, Any]:
    guest, now = run.guest, run.now
    run.step("listener certificate, machine key store, services, firewall, events")
    days = int(run.args["ExpiryWarningDays"])
    acl_ok = _acl_ok(guest)
    container = _key_container(run.vm)
    service = {"state": "Running" if guest.services_running else "Stopped", "start_type": "Manual"}
    recommended = _recommended(guest, now, days)
    findings: dict[str, Any] = {
        "os_build": guest.os_build,
        "listener_certificate": _certificate_info(guest, now),
        "machinekeys": {
            "folder_exists": True,
            "folder_acl_ok": acl_ok,
            "key_container": container,
            "key_container_acl_ok": acl_ok if container else None,
        },
        "services": {
            "TermService": dict(service),
            "SessionEnv": {"state": "Running", "start_type": "Manual"},
            "UmRdpService": dict(service),
        },
        "rdp_config": {
            "deny_connections": False,
            "port": guest.rdp_port,
            "security_layer": 2,
            "user_authentication": 1,
        },
        "tls12_server_enabled": _tls12_configured(guest),
        "firewall_rule_group": {profile: guest.firewall[profile] for profile in FIREWALL_PROFILES},
        "listening": guest.services_running,
        "events_24h": {
            event: sum(1 for number, at in guest.events if str(number) == event and now - at <= DAY)
            for event in EVENT_IDS
        },
        "active_sessions": guest.active_sessions,
        "recommended": recommended,
    }
    run.actions.append(
        f"read the state; recommended: {', '.join(recommended)}" if recommended else "read the state; no repair needed"
    )
    return findings


def _recommended(guest: Guest, now: dt.datetime, days: int) -> list[str]:
    """The repairs in the order to apply them: the key store, then the certificate, firewall and TLS."""
    repairs = []
    if not _acl_ok(guest):
        repairs.append("repair-machinekeys")
    elif guest.certificate is not None and _private_key_state(guest) == "unreadable":
        repairs.append("reset-machinekeys")  # the ACLs are right and the key still does not open: corrupt
    if _renewal_reason(guest, now, days) is not None or guest.certificate is None:
        repairs.append("renew-certificate")
    if not guest.firewall_open:
        repairs.append("enable-firewall-rule")
    if not _tls12_configured(guest):
        repairs.append("enable-tls12")
    return repairs


def _renew_certificate(run: _Run) -> dict[str, Any]:
    guest, now = run.guest, run.now
    cert = guest.certificate
    reason = _renewal_reason(guest, now, int(run.args["ExpiryWarningDays"]))
    stale = pin_stale = False
    if cert is not None and reason is not None:
        if reason == "private key unreadable":
            # A broken key store: a new certificate would fail the same way, so the old one stays.
            run.errors.append(
                f"{cert.thumbprint}: its private key does not open; a new certificate would fail the same way until "
                "the machine key store is repaired (repair-machinekeys, then reset-machinekeys): left in place"
            )
        elif guest.certificate_pinned and not cert.expired(now):
            run.errors.append(
                f"{cert.thumbprint}: {reason}, but an administrator pinned it and it has not expired: left in place"
            )
        else:
            stale, pin_stale = True, guest.certificate_pinned
    findings: dict[str, Any] = {
        "removed": [],
        "pin_cleared": False,
        "active_sessions": guest.active_sessions,
        "services_restarted": False,
        "new_certificate": _certificate_info(guest, now),
    }
    refuse = guest.active_sessions > 0 and run.args["Force"] != "true"
    if cert is not None and not stale:
        if reason is None:
            run.actions.append(
                f"the listener certificate {cert.thumbprint} is usable until {_iso(cert.not_after)}: nothing to do"
            )
        return findings
    if run.detect_only:
        if cert is not None:
            run.actions.append(f"would remove {cert.thumbprint} from {REMOTE_DESKTOP_STORE} ({reason})")
        if pin_stale:
            run.actions.append(f"would clear the stale pin to {cert.thumbprint if cert else 'a missing certificate'}")
        run.actions.append(
            f"would refuse: {guest.active_sessions} remote session(s) exist; Force=true would end them"
            if refuse
            else "would restart SessionEnv and TermService so that Windows creates a new certificate"
        )
        return findings
    if refuse:
        run.errors.append(
            f"refused: {guest.active_sessions} remote session(s) exist and restarting TermService would end them; "
            "run again with Force=true"
        )
        return findings
    if cert is not None:
        guest.certificate, guest.key_missing = None, False
        findings["removed"].append(cert.thumbprint)
        run.actions.append(f"removed {cert.thumbprint} from {REMOTE_DESKTOP_STORE} ({reason})")
    if pin_stale:
        guest.certificate_pinned = False
        findings["pin_cleared"] = True
        run.actions.append("cleared the stale pin")
    _restart_services(run, findings)
    return findings


def _restart_services(run: _Run, findings: dict[str, Any]) -> None:
    """SessionEnv and TermService restart: sessions end, and Windows makes a certificate if it can."""
    guest, now = run.guest, run.now
    run.step("restarting SessionEnv and TermService")
    guest.active_sessions, guest.services_running = 0, True
    findings["services_restarted"] = run.changed = True
    run.actions.append("restarted SessionEnv and TermService")
    if guest.key_store == "ok":
        new = guest.new_certificate(now)
        findings["new_certificate"] = _certificate_info(guest, now)
        run.actions.append(f"the listener now uses {new.thumbprint}, valid until {_iso(new.not_after)}")
    else:
        guest.events.append((1057, now))
        findings["new_certificate"] = None
        run.errors.append(
            "Windows did not create a new certificate within 60 seconds (see events 1057 and 1058): "
            "repair the machine key store, then run this again"
        )


def _repair_machinekeys(run: _Run) -> dict[str, Any]:
    guest = run.guest
    before = _acl_ok(guest)
    container = _key_container(run.vm)
    findings: dict[str, Any] = {
        "key_container": container,
        "key_container_acl_ok_before": before if container else None,
        "key_container_acl_ok_after": before if container else None,
        "folder_acl_ok_before": before,
        "folder_acl_ok_after": before,
        "log_path": None,
    }
    targets = [rf"{MACHINEKEYS}\{container}", MACHINEKEYS] if container else [MACHINEKEYS]
    if before:
        run.actions.append("MachineKeys and the listener key container have the required permissions: nothing to do")
        return findings
    if run.detect_only:
        run.actions.extend(
            f"would take ownership of {path} and grant *S-1-5-18 *S-1-5-20 *S-1-5-32-544" for path in targets
        )
        return findings
    log_path = rf"{LOG_ROOT}\{_stamp(run.now)}-repair-machinekeys"
    if guest.key_store == "acl-broken":
        guest.key_store = "ok"  # the existing certificate's key works again
    else:
        guest.acl_repaired = True  # corrupt: the permissions are right now, the key still does not open
    run.changed = run.reboot_required = True
    run.actions.extend(f"took ownership of {path} and granted *S-1-5-18 *S-1-5-20 *S-1-5-32-544" for path in targets)
    run.actions.append(f"logged the ACLs before and after in {log_path}; reboot to apply")
    findings.update(folder_acl_ok_after=True, log_path=log_path)
    if container:
        findings["key_container_acl_ok_after"] = True
    return findings


def _reset_machinekeys(run: _Run) -> dict[str, Any]:
    backup_name = f"MachineKeys.{_stamp(run.now)}.rdp-remediate.bak"
    backup_path = rf"{RSA_FOLDER}\{backup_name}"
    findings: dict[str, Any] = {"renamed": False, "backup_path": None}
    if backup_path in run.guest.machinekeys_backups:
        run.errors.append(f"{backup_path} already exists: run again in a second")
        return findings
    if run.detect_only:
        run.actions.append(f"would rename {MACHINEKEYS} to {backup_name} and keep it as the backup")
        run.actions.append(f"would create an empty {MACHINEKEYS} with the default permissions; a reboot would follow")
        return findings
    run.step(f"renaming {MACHINEKEYS} to {backup_name}")
    run.guest.machinekeys_backups.append(backup_path)
    _reset_key_store(run.guest)
    run.changed = run.reboot_required = True
    findings.update(renamed=True, backup_path=backup_path)
    run.actions.append(f"renamed {MACHINEKEYS} to {backup_name} (the backup)")
    run.actions.append(
        f"created an empty {MACHINEKEYS} with the default permissions; "
        "reboot so that Windows creates new keys and a new RDP certificate"
    )
    return findings


def _enable_firewall_rule(run: _Run) -> dict[str, Any]:
    guest = run.guest
    before = {profile: guest.firewall[profile] for profile in FIREWALL_PROFILES}
    if all(before.values()):
        run.actions.append("the Remote Desktop User Mode (TCP-In) rule is in effect on every profile: nothing to do")
    elif run.detect_only:
        run.actions.extend(f"would enable {rule}" for rule in RDP_RULES)
    else:
        guest.firewall = dict.fromkeys(FIREWALL_PROFILES, True)
        run.changed = True
        run.actions.extend(f"enabled {rule}" for rule in RDP_RULES)
    return {"before": before, "after": {profile: guest.firewall[profile] for profile in FIREWALL_PROFILES}}


def _enable_tls12(run: _Run) -> dict[str, Any]:
    guest = run.guest
    before = _tls12_configured(guest)
    key = r"HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols\TLS 1.2\Server"
    if before:
        run.actions.append("TLS 1.2 is enabled on the server side: nothing to do")
    elif run.detect_only:
        run.actions.append(
            f"would set Enabled=1 and DisabledByDefault=0 under {key} "
            "(now Enabled=0, DisabledByDefault=1); a reboot would follow"
        )
    else:
        guest.pending_tls12 = True  # SCHANNEL reads it at boot
        run.changed = run.reboot_required = True
        run.actions.append(
            f"set Enabled=1 and DisabledByDefault=0 under {key} (was Enabled=0, DisabledByDefault=1); reboot to apply"
        )
    return {"enabled_before": before, "enabled_after": _tls12_configured(guest)}


_SCRIPTS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "diagnose": _diagnose,
    "renew-certificate": _renew_certificate,
    "repair-machinekeys": _repair_machinekeys,
    "reset-machinekeys": _reset_machinekeys,
    "enable-firewall-rule": _enable_firewall_rule,
    "enable-tls12": _enable_tls12,
}


# --- the guest as the scripts see it ---------------------------------------------------------------------------


def _acl_ok(guest: Guest) -> bool:
    return guest.key_store == "ok" or guest.acl_repaired


def _key_container(vm: VirtualMachine) -> str | None:
    """The listener key's file in MachineKeys; None once a reset discarded it."""
    if vm.guest.certificate is None or vm.guest.key_missing:
        return None
    return LISTENER_KEY_PREFIX + vm.vm_uuid


def _private_key_state(guest: Guest) -> str:
    if guest.key_missing:
        return "missing"
    return "ok" if guest.key_store == "ok" else "unreadable"


def _renewal_reason(guest: Guest, now: dt.datetime, days: int) -> str | None:
    cert = guest.certificate
    if cert is None:
        return None
    if cert.expired(now):
        return "expired"
    if cert.not_after <= now + dt.timedelta(days=days):
        return f"expires {_iso(cert.not_after)}"
    state = _private_key_state(guest)
    return None if state == "ok" else f"private key {state}"


def _certificate_info(guest: Guest, now: dt.datetime) -> dict[str, Any] | None:
    cert = guest.certificate
    if cert is None:
        return None
    return {
        "thumbprint": cert.thumbprint,
        "store": REMOTE_DESKTOP_STORE,
        "not_before": _iso(cert.not_before),
        "not_after": _iso(cert.not_after),
        "expired": cert.expired(now),
        "self_signed": True,
        "private_key": _private_key_state(guest),
    }


def _tls12_configured(guest: Guest) -> bool:
    """What the SCHANNEL registry says (a pending change counts: the scripts read the registry)."""
    return guest.tls12_enabled if guest.pending_tls12 is None else guest.pending_tls12


def _reset_key_store(guest: Guest) -> None:
    """A fresh, empty MachineKeys: the store works, the certificate stays but its key went with the old folder."""
    guest.key_store, guest.acl_repaired = "ok", False
    if guest.certificate is not None:
        guest.key_missing = True


# --- PowerShell itself ---------------------------------------------------------------------------------------


def _bind(script: str, parameters: dict[str, str]) -> dict[str, str | int]:
    """Bind Run Command's string parameters as PowerShell binds them to the script's param() block."""
    declared = {p.name.lower(): p for p in PARAMETERS[script]}
    bound = {p.name: _convert(p, p.default) for p in PARAMETERS[script]}
    for name, value in parameters.items():
        param = declared.get(name.lower())  # parameter names are case-insensitive
        if param is None:
            raise _BindingError(
                f"A parameter cannot be found that matches parameter name '{name}'.",
                "InvalidArgument: (:) [script0.ps1], ParameterBindingException",
                "NamedParameterNotFound,script0.ps1",
            )
        bound[param.name] = _convert(param, value)
    return bound


def _convert(param: Parameter, value: str) -> str | int:
    if param.choices:
        if value.lower() not in param.choices:  # ValidateSet ignores case
            raise _BindingError(
                f"Cannot validate argument on parameter '{param.name}'. The argument \"{value}\" does not "
                f'belong to the set "{",".join(param.choices)}" specified by the ValidateSet attribute. '
                "Supply an argument that is in the set and then try the command again.",
                "InvalidData: (:) [script0.ps1], ParameterBindingValidationException",
                "ParameterArgumentValidationError,script0.ps1",
            )
        return value.lower()
    assert param.int_range is not None
    try:
        number = int(value.strip())
    except ValueError:
        raise _BindingError(
            f"Cannot process argument transformation on parameter '{param.name}'. Cannot convert value "
            f'"{value}" to type "System.Int32". Error: "Input string was not in a correct format."',
            "InvalidData: (:) [script0.ps1], ParameterBindingArgumentTransformationException",
            "ParameterArgumentTransformationError,script0.ps1",
        ) from None
    low, high = param.int_range
    if not low <= number <= high:
        bound, word = (high, "greater than the maximum") if number > high else (low, "less than the minimum")
        relation = "less than or equal to" if number > high else "greater than or equal to"
        raise _BindingError(
            f"Cannot validate argument on parameter '{param.name}'. The {number} argument is {word} allowed "
            f"range of {bound}. Supply an argument that is {relation} {bound} and then try the command again.",
            "InvalidData: (:) [script0.ps1], ParameterBindingValidationException",
            "ParameterArgumentValidationError,script0.ps1",
        )
    return number


def _powershell_error(message: str, category: str, error_id: str) -> str:
    return (
        f"{_SCRIPT_PATH} : {message}\n"
        f"    + CategoryInfo          : {category}\n"
        f"    + FullyQualifiedErrorId : {error_id}\n"
    )


def _not_recognized(script: str) -> str:
    """What PowerShell says about a script it cannot make sense of: its first word is no command."""
    words = next(
        (line.split() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")), [""]
    )
    word = words[0] if words else ""
    return _powershell_error(
        f"The term '{word}' is not recognized as the name of a cmdlet, function, script file, or operable "
        "program. Check the spelling of the name, or if a path was included, verify that the path is correct "
        "and try again.",
        f"ObjectNotFound: ({word}:String) [], CommandNotFoundException",
        "CommandNotFoundException",
    )


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
