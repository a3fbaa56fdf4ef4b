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

from sim.fleet import (
    CRP_KEY_FILE,
    DAY,
    FIREWALL_PROFILES,
    LISTENER_KEY_PREFIX,
    NETWORK_SERVICE,
    SYSTEM,
    TOKENS,
    Guest,
    KeyFile,
    VirtualMachine,
)

RSA_FOLDER = r"C:\ProgramData\Microsoft\Crypto\RSA"
MACHINEKEYS = RSA_FOLDER + r"\MachineKeys"
LOG_ROOT = r"C:\ProgramData\rdp-remediate"
REMOTE_DESKTOP_STORE = "Cert:\\LocalMachine\\Remote Desktop"
# The firewall rules enable-firewall-rule enables (by Name): the User Mode pair, never the group's Shadow rule.
RDP_RULES = ("RemoteDesktop-UserMode-In-TCP",)
EVENT_IDS = ("1057", "1058", "36870", "36871")
# Where Run Command writes the script it runs; PowerShell names the script by this path in its errors.
_SCRIPT_PATH = r"C:\Packages\Plugins\Microsoft.CPlat.Core.RunCommandWindows\1.1.18\Downloads\script0.ps1"
_NAME_LINE = re.compile(r"^\$ScriptName\s*=\s*'(?P<name>[^']*)'\s*$", re.MULTILINE)
_VERSION_LINE = re.compile(r"^\$ScriptVersion\s*=\s*'(?P<version>[^']*)'\s*$", re.MULTILINE)
# The scripts' Write-Summary limits: 20 entries a list, 300 characters an entry, 4000 bytes a line.
_MAX_ITEMS, _MAX_TEXT, _MAX_LINE = 20, 300, 4000
_THUMBPRINT = "^([0-9A-Fa-f]{40})?$"
_KEY_FILE = "^([0-9A-Za-z_.-]{1,200})?$"


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
    pattern: str | None = None  # [ValidatePattern('...')] [string]


_DETECT_ONLY = Parameter("DetectOnly", "false", choices=("true", "false"))
_FORCE = Parameter("Force", "false", choices=("true", "false"))
_THUMBPRINT_PARAMETER = Parameter("Thumbprint", "", pattern=_THUMBPRINT)

# Each script's param() block (a test keeps this equal to the scripts).
PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "diagnose": (_DETECT_ONLY,),
    "renew-certificate": (
        _DETECT_ONLY,
        _FORCE,
        _THUMBPRINT_PARAMETER,
        Parameter("Successor", "", pattern=_THUMBPRINT),
        Parameter("KeyFile", "", pattern=_KEY_FILE),
    ),
    "repair-machinekeys": (
        _DETECT_ONLY,
        Parameter("Mode", "grant", choices=("grant", "remove-deny", "folder")),
        _THUMBPRINT_PARAMETER,
        Parameter("KeyFile", "", pattern=_KEY_FILE),
    ),
    "reset-machinekeys": (_DETECT_ONLY, _FORCE, Parameter("AllowSessions", "false", choices=("true", "false"))),
    "enable-firewall-rule": (
        _DETECT_ONLY,
        Parameter("RuleName", "RemoteDesktop-UserMode-In-TCP", choices=("RemoteDesktop-UserMode-In-TCP",)),
        Parameter("Port", "3389", int_range=(1, 65535)),
    ),
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
    refused: str | None = None

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
        "refused": run.refused,
        "actions": run.actions,
        "findings": findings,
        "errors": run.errors,
    }
    return ScriptOutput("\n".join([*run.progress, summary_line(summary)]) + "\n", "")


def boot(vm: VirtualMachine, now: dt.datetime) -> None:
    """Windows starting: pending settings apply, sessions are gone, TermService starts.

    TermService makes its own certificate when none is pinned and the one it has is missing or keyless, if
    Windows can create the key (event 1057 when it cannot); it does NOT replace an expired one (event 1058):
    that is the bug behind error 0x904 (KB 2001849 and the Microsoft Learn article on error 0x904).
    """
    guest = vm.guest
    if guest.pending_tls12 is not None:
        guest.tls12_enabled, guest.pending_tls12 = guest.pending_tls12, None
    guest.services_running = True
    guest.active_sessions = guest.cached_sessions = 0
    if guest.crp_key is None:
        # The guest agent starts with Windows and re-creates its transport certificate when it is missing (Microsoft
        # Learn, "Azure virtual machine extensions and features for Windows").
        guest.crp_key = CRP_KEY_FILE
    own = guest.hash_type == 1 and not guest.certificate_pinned
    if own and (guest.certificate is None or guest.key is None or not guest.key.opens):
        guest.new_certificate(now)
    elif guest.certificate is not None and guest.certificate.expired(now):
        guest.events.append((1058, now))


def summary_line(summary: dict[str, Any]) -> str:
    """The summary as the scripts' Write-Summary prints it: compact ASCII JSON within the contract's limits.

    Trimming keeps the change record (`actions`) first: errors go before actions, and list items beyond the
    contract's 20 go first of all."""
    dropped = 0
    for key in ("actions", "errors"):
        items = [_ascii(text) for text in summary[key]]
        items = [text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..." for text in items]
        dropped += max(0, len(items) - _MAX_ITEMS)
        summary[key] = items[:_MAX_ITEMS]
    while True:
        if dropped:
            summary["truncated"] = dropped
        line = json.dumps(summary, separators=(",", ":"), ensure_ascii=True)
        victim = summary["errors"] or summary["actions"]
        if len(line.encode("ascii")) <= _MAX_LINE or not victim:
            return line
        victim.pop()
        dropped += 1


def _ascii(text: str) -> str:
    """What the scripts' Format-Ascii does: Windows PowerShell 5.1 writes stdout in the OEM code page."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


# --- diagnose: facts only ---------------------------------------------------------------------------------------

_CIM_CHECKS = ("listener", "key", "services", "port_owner", "sessions")  # the checks that go through WMI/CIM
CIM_TIMEOUT_SECONDS = 20  # the scripts' -OperationTimeoutSec


def _diagnose(run: _Run) -> dict[str, Any]:
    guest, now = run.guest, run.now
    run.step("facts: listener, key, key store, firewall, sessions, TLS, events")
    findings: dict[str, Any] = {
        "os_build": guest.os_build,
        "dotnet_release": guest.dotnet_release,
        "rdp_config": {
            "port": guest.rdp_port,
            "deny_connections": guest.deny_connections,
            "user_authentication": guest.user_authentication,
            "security_layer": guest.security_layer,
            "lan_adapter": guest.lan_adapter,
            "min_encryption_level": guest.min_encryption_level,
        },
        "listener": _listener_facts(guest, now),
        "key": _key_facts(guest),
        "machinekeys": _folder_facts(guest, now),
        "other_keys": _other_keys(guest),
        "roles": list(guest.roles),
        "services": {
            "TermService": _service(guest.services_running),
            "SessionEnv": _service(True),
            "UmRdpService": _service(guest.services_running),
        },
        "firewall": _firewall_facts(guest),
        "port_owner": guest.port_owner or ("TermService" if guest.services_running else ""),
        "sessions": {"remote": guest.active_sessions, "cached": guest.cached_sessions},
        "tls": {"tls12_server": _tls12_configured(guest), "tls13_server": guest.tls13_enabled},
        "events": {
            event: {
                "count": sum(1 for number, at in guest.events if str(number) == event and now - at <= DAY),
                "last": _clip(EVENT_TEXT[event], 40)
                if any(str(n) == event and now - at <= DAY for n, at in guest.events)
                else None,
            }
            for event in EVENT_IDS
        },
        "clock": {"offset_seconds": round(guest.clock_offset_seconds)},
        "crypto": _crypto_facts(guest),
        "failed_logons": {"type10": guest.failed_logons.get(10, 0), "type3": guest.failed_logons.get(3, 0)},
    }
    if guest.wmi_hung:
        # Each CIM call ends at its -OperationTimeoutSec (a hung WMI provider): its fact is unknown, the others are
        # read (Microsoft Learn, Get-CimInstance: -OperationTimeoutSec). The message wording is ours.
        for check in _CIM_CHECKS:
            findings[check] = None
            run.errors.append(
                f"{check}: the CIM operation did not complete within its OperationTimeoutSec ({CIM_TIMEOUT_SECONDS} s)"
            )
    return findings


def _crypto_facts(guest: Guest) -> dict[str, Any]:
    suites = guest.cipher_suites
    gcm = None if suites is None else sum(1 for s in suites if s.startswith("TLS_ECDHE_") and "_GCM_" in s)
    return {"fips": guest.fips, "cipher_suites": None if suites is None else len(suites), "tls12_ecdhe_gcm": gcm}


EVENT_TEXT = {
    "1057": "The RD Session Host Server has failed to create a new self signed certificate. Keyset does not exist",
    "1058": "The RD Session Host Server has failed to replace the expired self signed certificate",
    "36870": "A fatal error occurred when attempting to access the TLS server credential private key (0x8009030d)",
    "36871": "A fatal error occurred while creating a TLS server credential (0x80090331)",
}


# Owner SYSTEM; Everyone may list and add keys; Administrators full control (KB 278381).
_DEFAULT_FOLDER_SDDL = "O:SYG:SYD:PAI(A;;0x12019f;;;WD)(A;;FA;;;BA)"
_SAFE = re.compile(r"[^A-Za-z0-9 .,:;=_()/@+#*?-]")


def _clip(text: str, length: int) -> str:
    """What the scripts' Format-Clip does: characters JSON would escape become ?, then the contract's length."""
    return _SAFE.sub("?", text)[:length]


def _other_keys(guest: Guest) -> dict[str, Any]:
    """Every key file in MachineKeys but the listener's and the CRP transport key's: certificates' keys and key
    containers without a certificate alike (what a whole-store rename sets aside)."""
    names = [f"{n} (My)" for n in guest.other_keys] + list(guest.key_containers)
    return {"count": len(names), "names": [_clip(n, 48) for n in names[:5]]}


def _service(running: bool) -> dict[str, str]:
    return {"state": "Running" if running else "Stopped", "start_type": "Manual"}


def _listener_facts(guest: Guest, now: dt.datetime) -> dict[str, Any] | None:
    cert = guest.certificate
    if cert is None:
        return None
    subject = f"CN={cert.subject_cn}"
    return {
        "thumbprint": cert.thumbprint,
        "hash_type": guest.hash_type,
        "pin": guest.pin,
        "store": f"Cert:\\LocalMachine\\{guest.certificate_store}",
        "not_before": _iso(cert.not_before),
        "not_after": _iso(cert.not_after),
        "subject": _clip(subject, 80),
        "issuer": _clip(subject, 80),
        "self_signed": True,
        "successors": [
            {"thumbprint": s.thumbprint, "not_after": _iso(s.not_after)}
            for s in guest.successors
            if s.not_before <= now < s.not_after
        ][:2],
    }


def _key_facts(guest: Guest) -> dict[str, Any] | None:
    if guest.certificate is None:
        return None
    key = guest.key
    if key is None:
        return {
            "provider": "none",
            "container": None,
            "file": None,
            "exists": None,
            "system_read": None,
            "network_service_read": None,
            "denies": None,
            "sddl": None,
        }
    applying = sorted(key.denies & (TOKENS[SYSTEM] | TOKENS[NETWORK_SERVICE]))
    return {
        "provider": key.provider,
        "container": "TSSecKeySet1" if key.name.startswith(LISTENER_KEY_PREFIX) else key.name.split("_", 1)[0],
        "file": key.name,
        "exists": True,
        "system_read": key.readable_by(SYSTEM),
        "network_service_read": key.readable_by(NETWORK_SERVICE),
        "denies": applying[:3],
        "sddl": _clip(_sddl(key), 128),
    }


def _sddl(key: KeyFile) -> str:
    """The file's DACL as SDDL: deny entries first (canonical order), then read or full control grants."""
    denies = "".join(f"(D;;GR;;;{sid})" for sid in sorted(key.denies))
    grants = "".join(f"(A;;{'FA' if sid == SYSTEM else 'GR'};;;{sid})" for sid in sorted(key.readers))
    return f"O:SYD:P{denies}{grants}"


def _folder_facts(guest: Guest, now: dt.datetime) -> dict[str, Any]:
    newest = max(guest.backup_times, default=None)
    return {
        "exists": guest.folder_exists,
        "acl_ok": guest.folder_acl_ok if guest.folder_exists else None,
        "sddl": _DEFAULT_FOLDER_SDDL if guest.folder_acl_ok else "O:S-1-5-21-1004D:P(A;;FA;;;S-1-5-21-1004)",
        "backup_age_hours": round((now - newest).total_seconds() / 3600, 2) if newest is not None else None,
    }


def _firewall_facts(guest: Guest) -> dict[str, Any]:
    paths = guest.allow_paths()
    enabled = [p for p in FIREWALL_PROFILES if guest.firewall[p]]
    return {
        "profiles": {
            p: {"enabled": guest.firewall_enabled[p], "active": p in guest.active_profiles} for p in FIREWALL_PROFILES
        },
        "allow_paths": [
            {
                "rule": _clip(r.name, 40),
                "profiles": _clip(r.profiles, 24),
                "remote": _clip(r.remote, 40),
                "policy": r.policy,
            }
            for r in paths
        ][:2],
        "builtin_rule": {
            "enabled": bool(enabled),
            "profiles": "Any",  # the rule's own scope; enabling it enables it for this scope
            "port": guest.builtin_rule_port,
            "any_ip": True,  # the built-in rule's RemoteAddress as Windows ships it
        },
        "policy_copies": sum(1 for r in guest.policy_rules if r.name == RDP_RULES[0]),
    }


# --- the repair scripts: each re-checks its precondition, and refuses rather than act on stale facts -----------


def _refuse(run: _Run, reason: str) -> None:
    run.refused = reason
    run.actions.append(f"refused: {reason}")


def _renew_certificate(run: _Run) -> dict[str, Any]:
    guest, now = run.guest, run.now
    named, successor = str(run.args["Thumbprint"]).upper(), str(run.args["Successor"]).upper()
    current = guest.certificate.thumbprint if guest.certificate is not None else ""
    findings: dict[str, Any] = {
        "thumbprint": named or None,
        "removed": None,
        "pinned": None,
        "sessions": guest.sessions,
        "restarted": [],
        "listener": current or None,
        "set_aside": None,
    }
    if current != named:
        _refuse(run, f"the listener uses {current or 'no certificate'}, not {named or 'none'}: the facts changed")
        return findings
    if successor:
        return _repin(run, findings, successor)
    refusal = _renewal_refusal(run, current) or _set_aside_refusal(run)
    if refusal:
        _refuse(run, refusal)
        return findings
    if run.detect_only:
        return _renewal_detect_only(run, findings, current)
    if run.args["KeyFile"] and guest.key is not None:
        backup = f"{guest.key.name}.{_stamp(now)}.rdp-remediate.bak"
        findings["set_aside"] = rf"{_KEY_FOLDERS[guest.key.provider]}\{backup}"
        guest.key = None  # renamed, never deleted: Windows creates a new container at the renewal
        run.changed = True
        run.actions.append(f"renamed {run.args['KeyFile']} to {backup} (set aside, not deleted)")
    if guest.certificate is not None:
        guest.certificate = None
        findings["removed"] = current
        run.actions.append(f"removed {current} from {REMOTE_DESKTOP_STORE}")
    run.changed = True
    if guest.stop_hangs:
        return _stuck_in_stop_pending(run, findings)
    # Microsoft's documented renewal: remove the certificate, stop and start SessionEnv (Remote Desktop
    # Configuration), which makes the new one (Microsoft Learn, "An internal error occurs when you try to connect
    # to an Azure VM through Remote Desktop", troubleshoot-rdp-internal-error, step 2).
    findings["restarted"].append("SessionEnv")
    run.actions.append("restarted SessionEnv")
    new = guest.new_certificate(now)
    if new is None:
        run.errors.append("Windows did not create a new certificate within 60 s (event 1057): the key store is broken")
        findings["listener"] = None
        run.reboot_required = True
    else:
        findings["listener"] = new.thumbprint
        run.actions.append(f"the listener now uses {new.thumbprint}, valid until {_iso(new.not_after)}")
    return findings


def _renewal_detect_only(run: _Run, findings: dict[str, Any], current: str) -> dict[str, Any]:
    if run.args["KeyFile"]:
        run.actions.append(f"would rename {run.args['KeyFile']} to set it aside")
    if current:
        run.actions.append(f"would remove {current} from {REMOTE_DESKTOP_STORE}")
    run.actions.append("would restart SessionEnv and wait up to 60 s for Windows' new certificate")
    return findings


def _renewal_refusal(run: _Run, current: str) -> str | None:
    guest = run.guest
    if guest.certificate is not None and guest.hash_type != 1:
        return f"{current} is not Windows' own certificate (HashType {guest.hash_type}): not removed"
    if guest.sessions and run.args["Force"] != "true":
        return f"{guest.sessions} remote session(s) (logon types 10 and 12): restarting SessionEnv is not risked"
    return None


def _stuck_in_stop_pending(run: _Run, findings: dict[str, Any]) -> dict[str, Any]:
    """SessionEnv stays in StopPending: ServiceController.WaitForStatus ends with a TimeoutException at its limit,
    and Start() on a service that is not Stopped throws InvalidOperationException (Microsoft Learn,
    ServiceController.WaitForStatus and ServiceController.Start). Only a reboot ends it."""
    run.errors.append("SessionEnv did not reach Stopped within 60 s (StopPending): a reboot is needed")
    findings["listener"] = None
    run.reboot_required = True
    return findings


def _set_aside_refusal(run: _Run) -> str | None:
    """A key file named for setting aside must be the listener's own key (Windows' own certificate)."""
    guest, file = run.guest, str(run.args["KeyFile"])
    if not file:
        return None
    if guest.hash_type != 1:
        return f"the listener's certificate is not Windows' own (HashType {guest.hash_type}): its key stays"
    if guest.key is None or guest.key.name != file:
        return f"{file} is not the key file of the listener's certificate"
    return None


def _repin(run: _Run, findings: dict[str, Any], successor: str) -> dict[str, Any]:
    guest, now = run.guest, run.now
    candidate = next((c for c in guest.successors if c.thumbprint == successor), None)
    if guest.hash_type != 3 or guest.pin != "registry":
        _refuse(run, f"the listener is not pinned by the registry to a custom certificate (HashType {guest.hash_type})")
        return findings
    if candidate is None or not candidate.not_before <= now < candidate.not_after:
        _refuse(run, f"{successor} is not a valid certificate in Cert:\\LocalMachine\\My")
        return findings
    if run.detect_only:
        run.actions.append(f"would set SSLCertificateSHA1Hash to {successor}")
        return findings
    guest.certificate = candidate
    guest.successors.remove(candidate)
    guest.key = guest.own_key()  # the successor's own key, readable by NETWORK SERVICE (a precondition)
    guest.key.name = "9a3c51f0e7b24d8c6f1e0b2a3c4d5e6f_" + guest.key.name.split("_", 1)[1]
    run.changed = True
    findings.update(pinned=successor, listener=successor)
    run.actions.append(f"set SSLCertificateSHA1Hash to {successor} (was {findings['thumbprint']})")
    return findings


def _repair_machinekeys(run: _Run) -> dict[str, Any]:
    guest, mode = run.guest, str(run.args["Mode"])
    findings: dict[str, Any] = {
        "mode": mode,
        "target": None,
        "ok_before": None,
        "ok_after": None,
        "removed_denies": [],
        "log_path": None,
        "owner": None,
    }
    if mode == "folder":
        return _repair_folder(run, findings)
    key = guest.key
    named, file = str(run.args["Thumbprint"]).upper(), str(run.args["KeyFile"])
    current = guest.certificate.thumbprint if guest.certificate is not None else ""
    if not named or current != named or key is None or key.name != file:
        _refuse(run, f"{file or 'no key file'} is not the key of the listener's certificate {current or '(none)'}")
        return findings
    findings["target"] = rf"{_KEY_FOLDERS[key.provider]}\{file}"
    ok = key.readable_by(SYSTEM) and key.readable_by(NETWORK_SERVICE)
    findings["ok_before"] = findings["ok_after"] = ok
    return _repair_key_acl(run, findings, key, ok)


def _repair_key_acl(run: _Run, findings: dict[str, Any], key: KeyFile, ok: bool) -> dict[str, Any]:
    """Grant read, or remove the denies that apply and grant, on the one key file; never anything else."""
    file, mode = key.name, str(run.args["Mode"])
    applying = sorted(key.denies & (TOKENS[SYSTEM] | TOKENS[NETWORK_SERVICE]))
    if ok:
        run.actions.append(f"SYSTEM and NETWORK SERVICE can read {file}: nothing to do")
        return findings
    if mode == "grant" and applying:
        _refuse(run, f"deny entries for {', '.join(applying)} on {file}: a grant cannot undo a deny (use remove-deny)")
        return findings
    if run.detect_only:
        run.actions.append(f"would remove the deny entries {applying} and grant *S-1-5-18 *S-1-5-20 read on {file}")
        return findings
    log_path = rf"{LOG_ROOT}\{_stamp(run.now)}-repair-machinekeys"
    # icacls /remove:d removes every deny entry for each SID (Microsoft Learn, icacls); what remains is judged
    # again, and only a file both accounts can now read asks for a reboot.
    key.denies -= set(applying)
    key.readers |= {SYSTEM, NETWORK_SERVICE}
    ok_after = key.readable_by(SYSTEM) and key.readable_by(NETWORK_SERVICE)
    run.changed = True
    run.reboot_required = ok_after
    findings.update(ok_after=ok_after, removed_denies=applying, log_path=log_path, owner=SYSTEM)
    if applying:
        run.actions.append(f"removed the deny entries for {', '.join(applying)} on {file}")
    run.actions.append(f"granted *S-1-5-18 and *S-1-5-20 read on {file}; ACL before and after in {log_path}")
    return findings


def _repair_folder(run: _Run, findings: dict[str, Any]) -> dict[str, Any]:
    guest = run.guest
    findings.update(target=MACHINEKEYS, ok_before=guest.folder_acl_ok, ok_after=guest.folder_acl_ok)
    if guest.folder_acl_ok:
        run.actions.append("SYSTEM and Administrators have full control of MachineKeys: nothing to do")
        return findings
    if run.detect_only:
        run.actions.append(f"would grant *S-1-5-18 and *S-1-5-32-544 full control on {MACHINEKEYS} (this folder)")
        return findings
    guest.folder_acl_ok = True
    log_path = rf"{LOG_ROOT}\{_stamp(run.now)}-repair-machinekeys"
    run.changed = run.reboot_required = True
    findings.update(ok_after=True, log_path=log_path)
    run.actions.append(f"granted *S-1-5-18 and *S-1-5-32-544 full control on {MACHINEKEYS}; ACL saved in {log_path}")
    return findings


def _reset_machinekeys(run: _Run) -> dict[str, Any]:
    guest = run.guest
    backup_name = f"MachineKeys.{_stamp(run.now)}.rdp-remediate.bak"
    backup_path = rf"{RSA_FOLDER}\{backup_name}"
    others = _other_keys(guest)
    findings: dict[str, Any] = {
        "renamed": False,
        "backup_path": None,
        "would_set_aside": {"count": others["count"], "names": others["names"]},
        "carried": None,
    }
    refusal = _reset_refusal(run, others["count"])
    if refusal:
        _refuse(run, refusal)
        return findings
    if run.detect_only:
        run.actions.extend(f"would set aside {name}" for name in others["names"])
        run.actions.append(f"would build a new {MACHINEKEYS} and swap it in; the old one kept as {backup_name}")
        return findings
    if not guest.folder_exists:
        guest.folder_exists, guest.folder_acl_ok, guest.store_broken = True, True, False
        run.changed = run.reboot_required = True
        run.actions.append(f"{MACHINEKEYS} was missing: created it with the default ACL")
        return findings
    guest.machinekeys_backups.append(backup_path)
    guest.backup_times.append(run.now)
    guest.folder_exists, guest.folder_acl_ok, guest.store_broken = True, True, False
    guest.key, guest.other_keys, guest.key_containers = None, [], []
    run.changed = run.reboot_required = True
    findings.update(renamed=True, backup_path=backup_path, carried=guest.crp_key)
    run.actions.append(f"built a new MachineKeys with the default ACL and swapped it in; the old one is {backup_name}")
    if guest.crp_key:
        run.actions.append(f"copied the CRP transport key {guest.crp_key} into the new MachineKeys")
    run.actions.extend(f"set aside {name}" for name in others["names"])
    return findings


def _reset_refusal(run: _Run, others: int) -> str | None:
    """What reset-machinekeys re-checks before it renames anything."""
    guest = run.guest
    newest = max(guest.backup_times, default=None)
    if newest is not None and run.now - newest < DAY:
        return f"a backup from {_iso(newest)} is less than a day old: the reset already ran"
    critical = [role for role in guest.roles if role in ("domain-controller", "ad-cs")]
    if critical:
        return f"this machine is a {', '.join(critical)}: MachineKeys is never renamed here"
    if guest.certificate is not None and guest.hash_type != 1:
        return f"the listener's certificate is not Windows' own (HashType {guest.hash_type}): the store stays"
    if guest.folder_exists and guest.key_usable:
        return "the listener's key works again: the store is not renamed"
    return _reset_override_refusal(run, others)


def _reset_override_refusal(run: _Run, others: int) -> str | None:
    """What only the reset's overrides (AllowSessions, Force) get past."""
    guest = run.guest
    if guest.sessions and run.args["AllowSessions"] != "true":
        return f"{guest.sessions} remote session(s) (logon types 10 and 12) would be dropped by the reboot"
    if (others or guest.roles) and run.args["Force"] != "true":
        return f"it would set aside {others} other key file(s) and affect roles [{', '.join(guest.roles)}]"
    return None


def _enable_firewall_rule(run: _Run) -> dict[str, Any]:
    guest, rule, port = run.guest, str(run.args["RuleName"]), int(run.args["Port"])
    before = any(guest.firewall.values())
    findings: dict[str, Any] = {"rule": rule, "enabled_before": before, "enabled_after": before}
    if guest.policy_rules:
        _refuse(run, f"a Group Policy copy of {rule} governs it: the policy's owner decides")
    elif port != guest.builtin_rule_port or port != guest.rdp_port:
        _refuse(run, f"{rule} allows TCP {guest.builtin_rule_port}; the listener uses {guest.rdp_port}")
    elif guest.allow_paths():
        run.actions.append(f"an allow path for TCP {port} exists on the active profile: nothing to do")
    elif run.detect_only:
        run.actions.append(f"would enable {rule}")
    else:
        guest.firewall = dict.fromkeys(FIREWALL_PROFILES, True)
        run.changed = True
        findings["enabled_after"] = True
        run.actions.append(f"enabled {rule}")
    return findings


def _enable_tls12(run: _Run) -> dict[str, Any]:
    guest = run.guest
    before = _tls12_configured(guest)
    key = r"HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols\TLS 1.2\Server"
    if before:
        run.actions.append("TLS 1.2 is enabled on the server side: nothing to do")
    elif run.detect_only:
        run.actions.append(f"would set Enabled=1 and DisabledByDefault=0 under {key}; a reboot would follow")
    else:
        guest.pending_tls12 = True  # SCHANNEL reads it at boot
        run.changed = run.reboot_required = True
        run.actions.append(f"set Enabled=1 and DisabledByDefault=0 under {key} (was Enabled=0); reboot to apply")
    return {"enabled_before": before, "enabled_after": _tls12_configured(guest)}


_SCRIPTS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "diagnose": _diagnose,
    "renew-certificate": _renew_certificate,
    "repair-machinekeys": _repair_machinekeys,
    "reset-machinekeys": _reset_machinekeys,
    "enable-firewall-rule": _enable_firewall_rule,
    "enable-tls12": _enable_tls12,
}
_KEY_FOLDERS = {"csp": MACHINEKEYS, "cng": r"C:\ProgramData\Microsoft\Crypto\Keys"}


def _tls12_configured(guest: Guest) -> bool:
    """What the SCHANNEL registry says (a pending change counts: the scripts read the registry)."""
    return guest.tls12_enabled if guest.pending_tls12 is None else guest.pending_tls12


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
    if param.pattern is not None:
        if not re.match(param.pattern, value, re.IGNORECASE):  # ValidatePattern ignores case by default
            raise _BindingError(
                f"Cannot validate argument on parameter '{param.name}'. The argument \"{value}\" does not match "
                f'the "{param.pattern}" pattern. Supply an argument that matches "{param.pattern}" and try the '
                "command again.",
                "InvalidData: (:) [script0.ps1], ParameterBindingValidationException",
                "ParameterArgumentValidationError,script0.ps1",
            )
        return value
    if param.choices:
        if value.lower() not in [choice.lower() for choice in param.choices]:  # ValidateSet ignores case
            raise _BindingError(
                f"Cannot validate argument on parameter '{param.name}'. The argument \"{value}\" does not "
                f'belong to the set "{",".join(param.choices)}" specified by the ValidateSet attribute. '
                "Supply an argument that is in the set and then try the command again.",
                "InvalidData: (:) [script0.ps1], ParameterBindingValidationException",
                "ParameterArgumentValidationError,script0.ps1",
            )
        return next(choice for choice in param.choices if choice.lower() == value.lower())
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
