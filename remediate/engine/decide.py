"""The one place that decides what to do to a VM: facts + probe + options in, a plan with its reasons out.

`decide` is pure: it reads the diagnose summary (facts only, see contract.schema.json), the RDP probe's status
and a `Context` (time, options, the steps this request already ran), and returns a `Decision`: what is wrong,
the ordered steps (each with its exact target and reason) and the steps it refuses (each with its reason).
Nothing here talks to Azure, so "why did it do X on this VM" is answered by this function and the facts.

The ladder for the listener's certificate, least disruptive first, narrowest target first:

1. the MachineKeys folder ACL, when SYSTEM or Administrators lost their rights (KB 278381);
2. grant read, or remove the deny entries, on *that one key file* (TermService reads the key as NETWORK
   SERVICE, KB 2001849);
3. Windows' own certificate (HashType 1): renew it (remove it, restart SessionEnv); when the key does not open
   although its ACL is right, the same Run Command first sets aside only its key container;
4. a custom certificate (HashType 3): re-pin to a valid successor with a readable key, else report;
5. a Group Policy certificate (HashType 2): reported, never touched;
6. the whole MachineKeys rename: last, only for Windows' own certificate after a renewal in this request
   could not make a new one and the probe and events still show the key failing; refused without forceKeyStore
   while other key files or server roles depend on the store, never on a domain controller or a certification
   authority, and refused when a backup newer than a day exists.

Every step that restarts a Remote Desktop service or leads to a reboot is refused while remote sessions exist
(or cannot be counted), unless `force` is given; `force` overrides sessions only, never the key store's guards.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remediate.model import Plan

SYSTEM, NETWORK_SERVICE = "S-1-5-18", "S-1-5-20"
BUILTIN_RULE = "RemoteDesktop-UserMode-In-TCP"  # the rule's Name, which is not localized
BUILTIN_RULE_PORT = 3389
BACKUP_FRESH_HOURS = 24.0
# Probe statuses: RDP works / no network path to tell / the server offered no usable certificate.
PROBE_OK = frozenset({"healthy", "expiring-soon"})
PROBE_NO_PATH = frozenset({"timeout", "unreachable", "no-address"})
PROBE_NO_KEY = frozenset({"no-certificate"})
# Probe statuses that a closed firewall produces: nothing answers (refused), or packets are dropped (timeout).
PROBE_BLOCKED = frozenset({"refused", "timeout"})
# Events that show the listener's key does not work: 1057 (no self-signed certificate could be made) and 36870
# (SCHANNEL cannot open the TLS credential's private key) (Microsoft Learn, troubleshoot-rdp-internal-error).
KEY_EVIDENCE_EVENTS = ("1057", "36870")
# Server roles whose keys a whole-store rename must never set aside, whatever overrides are given: a domain
# controller's and a certification authority's keys are not re-created by anything (NTDS, CertSvc).
NEVER_RESET_ROLES = frozenset({"domain-controller", "ad-cs"})


class Action(enum.StrEnum):
    REPAIR_FOLDER_ACL = "repair-folder-acl"
    GRANT_KEY_READ = "grant-key-read"
    REMOVE_KEY_DENY = "remove-key-deny"
    RENEW_CERTIFICATE = "renew-certificate"
    REPIN_CERTIFICATE = "repin-certificate"
    RESET_MACHINEKEYS = "reset-machinekeys"
    ENABLE_FIREWALL_RULE = "enable-firewall-rule"
    ENABLE_TLS12 = "enable-tls12"


# The guest script each action runs.
SCRIPT_OF: Mapping[Action, str] = {
    Action.REPAIR_FOLDER_ACL: "repair-machinekeys",
    Action.GRANT_KEY_READ: "repair-machinekeys",
    Action.REMOVE_KEY_DENY: "repair-machinekeys",
    Action.RENEW_CERTIFICATE: "renew-certificate",
    Action.REPIN_CERTIFICATE: "renew-certificate",
    Action.RESET_MACHINEKEYS: "reset-machinekeys",
    Action.ENABLE_FIREWALL_RULE: "enable-firewall-rule",
    Action.ENABLE_TLS12: "enable-tls12",
}
# Actions that restart a Remote Desktop service (and so end or disturb sessions).
RESTARTS_SERVICES = frozenset({Action.RENEW_CERTIFICATE})
# Actions whose scripts report reboot_required when they change something: a reboot ends every session.
LEADS_TO_REBOOT = frozenset(
    {
        Action.REPAIR_FOLDER_ACL,
        Action.GRANT_KEY_READ,
        Action.REMOVE_KEY_DENY,
        Action.RENEW_CERTIFICATE,
        Action.RESET_MACHINEKEYS,
        Action.ENABLE_TLS12,
    }
)
CERTIFICATE_CHAIN = frozenset(Action) - {Action.ENABLE_FIREWALL_RULE, Action.ENABLE_TLS12}


@dataclass(frozen=True)
class Step:
    """One repair: the action, the script and its exact target (Run Command parameters), and why."""

    action: Action
    parameters: tuple[tuple[str, str], ...]
    reason: str

    @property
    def script(self) -> str:
        return SCRIPT_OF[self.action]

    @property
    def key(self) -> str:
        """What "the same step" means: the action on the same target (a thumbprint may change by renewal,
        so a renewal is the same step whatever certificate it names)."""
        target = dict(self.parameters).get("KeyFile") or dict(self.parameters).get("RuleName") or ""
        return f"{self.action.value}:{target}"

    @property
    def restarts_services(self) -> bool:
        return self.action in RESTARTS_SERVICES

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "script": self.script,
            "target": dict(self.parameters),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Refusal:
    action: Action
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"action": self.action.value, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    problems: tuple[str, ...]  # what is wrong, in words an admin reads
    steps: tuple[Step, ...]
    refusals: tuple[Refusal, ...]
    reports: tuple[str, ...]  # what is left to its owner
    unknown: tuple[str, ...] = ()  # facts that could not be read and that the plan would have needed

    @property
    def clean(self) -> bool:
        """Nothing known to be wrong and nothing needed unknown: the only state that counts as verified."""
        return not self.problems and not self.unknown

    def explain(self) -> str:
        parts = list(self.problems)
        parts += [f"refused {r.action.value}: {r.reason}" for r in self.refusals]
        parts += list(self.reports) + list(self.unknown)
        return "; ".join(dict.fromkeys(parts)) or "nothing wrong found"

    def to_json(self) -> dict[str, Any]:
        return {
            "problems": list(self.problems),
            "steps": [s.to_json() for s in self.steps],
            "refusals": [r.to_json() for r in self.refusals],
            "reports": list(self.reports),
            "unknown": list(self.unknown),
        }


@dataclass(frozen=True)
class Context:
    now: dt.datetime
    expiry_warning_days: int = 30
    plan: Plan = Plan.AUTO
    force: bool = False  # act despite remote sessions (a service restart or a reboot disturbs them)
    done: frozenset[str] = frozenset()  # keys of steps that already succeeded in this request
    force_keystore: bool = False  # rename MachineKeys although other keys live in it (never on a DC or CA)
    reboot_always: bool = False  # the reboot policy reboots after any change, not only when a script asks


@dataclass
class _Draft:
    problems: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def step(self, action: Action, reason: str, **target: str) -> None:
        self.steps.append(Step(action, tuple(target.items()), reason))

    def refuse(self, action: Action, reason: str) -> None:
        self.refusals.append(Refusal(action, reason))


def decide(summary: Mapping[str, Any], probe: str | None, context: Context) -> Decision:
    """The plan for a VM from its diagnose summary (facts), the probe's status and the context."""
    facts = summary["findings"]
    unknown = unknown_checks(summary)
    draft = _Draft()
    _certificate(draft, facts, unknown, probe, context)
    if context.plan is Plan.AUTO:
        _firewall(draft, facts, unknown, probe)
        _tls(draft, facts, unknown, probe)
        _listener_settings(draft, facts)
    _gate(draft, facts, context)
    return Decision(
        tuple(draft.problems), tuple(draft.steps), tuple(draft.refusals), tuple(draft.reports), tuple(draft.unknown)
    )


def unknown_checks(summary: Mapping[str, Any]) -> frozenset[str]:
    """The facts diagnose could not read: each error begins with the name of its check."""
    return frozenset(str(error).split(":", 1)[0].strip() for error in summary.get("errors", []))


# --- the listener's certificate and its key ----------------------------------------------------------------


def _certificate(
    draft: _Draft, facts: Mapping[str, Any], unknown: frozenset[str], probe: str | None, ctx: Context
) -> None:
    if "listener" in unknown or ("key" in unknown and facts.get("listener") is not None):
        draft.unknown.append(
            "the listener's certificate or key could not be read (see errors): nothing is changed on a guess"
        )
        return
    listener = facts.get("listener")
    if listener is None:
        _no_certificate(draft, facts, unknown, probe, ctx)
        return
    validity = _validity(listener, ctx)
    key_state = _key_state(facts.get("key"))
    hash_type = listener.get("hash_type")
    thumbprint = listener["thumbprint"]
    issues = [text for text in (validity, key_state) if text]
    if hash_type == 2:
        if issues:
            draft.problems.append(f"listener certificate {thumbprint}: {', '.join(issues)}")
            draft.reports.append(
                f"{thumbprint} comes from a Group Policy certificate template (HashType 2){_event_evidence(facts)}: "
                "its owner renews it; rdp-remediate never touches it"
            )
        return
    if hash_type not in (1, 3):
        if issues:
            draft.problems.append(f"listener certificate {thumbprint}: {', '.join(issues)}")
            draft.reports.append(f"cannot tell whose certificate {thumbprint} is (HashType {hash_type}): not touched")
        return
    if issues:
        draft.problems.append(f"listener certificate {thumbprint}: {', '.join(issues)}")
    _key_acl(draft, facts, listener)
    if hash_type == 3:
        _custom(draft, listener, validity, key_state)
        return
    if ctx.plan is Plan.FULL and _key_failure_shown(facts, probe):
        _reset(draft, facts, ctx, "the full plan was asked for and the probe and events show the key failing")
        return
    _own(draft, facts, listener, validity, key_state, probe, ctx)


def _no_certificate(
    draft: _Draft, facts: Mapping[str, Any], unknown: frozenset[str], probe: str | None, ctx: Context
) -> None:
    if probe in PROBE_OK:
        draft.unknown.append(
            f"the listener reports no certificate but the probe was offered a working one ({probe}): the facts "
            "disagree, nothing is changed"
        )
        return
    draft.problems.append("the listener has no certificate")
    if (ctx.plan is Plan.FULL and _key_failure_shown(facts, probe)) or _store_shown_broken(facts, unknown, probe, ctx):
        _reset(draft, facts, ctx, "a renewal in this request could not make Windows create a certificate")
        return
    if _folder(draft, facts, unknown, ctx):
        return
    draft.step(
        Action.RENEW_CERTIFICATE, "no certificate: restart SessionEnv so that Windows creates its own", Thumbprint=""
    )


def _validity(listener: Mapping[str, Any], ctx: Context) -> str | None:
    if listener.get("store") is None:
        return "in no certificate store"
    not_before, not_after = _time(listener.get("not_before")), _time(listener.get("not_after"))
    if not_after is None or not_before is None:
        return None  # dates unknown: not called broken
    if not_after <= ctx.now:
        return f"expired {_iso(not_after)}"
    if not_before > ctx.now:
        return f"not valid before {_iso(not_before)}"
    if not_after <= ctx.now + dt.timedelta(days=ctx.expiry_warning_days):
        return f"expires {_iso(not_after)}"
    return None


def _key_state(key: Mapping[str, Any] | None) -> str | None:
    """What is wrong with the key as NETWORK SERVICE meets it; None when nothing is known to be wrong."""
    if key is None:
        return None
    if key.get("provider") == "none":
        return "no private key"
    if key.get("exists") is False:
        return "key file missing"
    if key.get("denies"):
        return f"key file denies {', '.join(key['denies'])}"
    if key.get("network_service_read") is False or key.get("system_read") is False:
        return "key file not readable by NETWORK SERVICE or SYSTEM"
    return None


def _key_acl(draft: _Draft, facts: Mapping[str, Any], listener: Mapping[str, Any]) -> None:
    """Grant read, or remove the denies, on the one key file of the listener's certificate."""
    key = facts.get("key")
    if key is None or key.get("provider") not in ("csp", "cng") or not key.get("exists") or not key.get("file"):
        return
    target = {"Thumbprint": listener["thumbprint"], "KeyFile": key["file"]}
    if key.get("denies"):
        draft.step(
            Action.REMOVE_KEY_DENY,
            f"deny entries for {', '.join(key['denies'])} on {key['file']} stop TermService (NETWORK SERVICE) from "
            "reading the key; a grant cannot undo a deny",
            Mode="remove-deny",
            **target,
        )
    elif key.get("network_service_read") is False or key.get("system_read") is False:
        draft.step(
            Action.GRANT_KEY_READ,
            f"NETWORK SERVICE or SYSTEM cannot read {key['file']}: grant read on that one file (KB 2001849)",
            Mode="grant",
            **target,
        )


def _custom(draft: _Draft, listener: Mapping[str, Any], validity: str | None, key_state: str | None) -> None:
    thumbprint = listener["thumbprint"]
    unusable = validity is not None and not validity.startswith("expires")
    if not unusable and key_state not in ("no private key", "key file missing"):
        if validity:
            draft.reports.append(f"the custom certificate {thumbprint} {validity}: its owner replaces it")
        return
    if listener.get("pin") == "policy":
        draft.reports.append(f"{thumbprint} is pinned by Group Policy: its owner re-pins it; not touched")
        return
    successors = sorted(listener.get("successors") or [], key=lambda s: s.get("not_after") or "", reverse=True)
    if not successors:
        draft.reports.append(
            f"the custom certificate {thumbprint} is unusable and LocalMachine\\My holds no valid successor with a "
            "key NETWORK SERVICE can read: its owner must provide one"
        )
        return
    successor = successors[0]["thumbprint"]
    draft.step(
        Action.REPIN_CERTIFICATE,
        f"the custom certificate {thumbprint} is unusable; {successor} (same subject, valid until "
        f"{successors[0].get('not_after')}, readable key) succeeds it",
        Thumbprint=thumbprint,
        Successor=successor,
    )


def _own(
    draft: _Draft,
    facts: Mapping[str, Any],
    listener: Mapping[str, Any],
    validity: str | None,
    key_state: str | None,
    probe: str | None,
    ctx: Context,
) -> None:
    """Windows' own self-signed certificate (HashType 1): renew it, setting aside its key container first when
    the key does not open although its ACL is right; the store reset when a renewal already failed."""
    thumbprint = listener["thumbprint"]
    if _store_shown_broken(facts, frozenset(), probe, ctx):
        _reset(draft, facts, ctx, "a renewal in this request could not give the listener a working key")
        return
    if _folder(draft, facts, frozenset(), ctx):
        return
    key = facts.get("key") or {}
    acl_fixed_here = any(s.action in (Action.GRANT_KEY_READ, Action.REMOVE_KEY_DENY) for s in draft.steps)
    unopenable = (
        ctx.plan is not Plan.RENEW_ONLY
        and probe in PROBE_NO_KEY
        and key_state is None
        and validity is None
        and not acl_fixed_here
        and key.get("exists") is True
        and key.get("network_service_read") is True
    )
    if unopenable:
        draft.problems.append(
            f"the probe says the server offers no usable certificate ({probe}) although {key.get('file')} is readable"
        )
        # One Run Command sets the key aside and renews, after its own session check: as two, a session that
        # appears in between would leave the key renamed and the listener without one.
        draft.step(
            Action.RENEW_CERTIFICATE,
            f"the key of Windows' own certificate {thumbprint} does not open although its ACL is right: set aside "
            f"{key.get('file')} (renamed, not deleted), remove the certificate and restart SessionEnv so that "
            "Windows makes a new key and certificate",
            Thumbprint=thumbprint,
            KeyFile=str(key.get("file")),
        )
        return
    if ctx.plan is Plan.RENEW_ONLY and validity is None:
        return
    if validity is not None or key_state in ("no private key", "key file missing"):
        reason = validity or key_state
        draft.step(
            Action.RENEW_CERTIFICATE,
            f"Windows' own certificate {thumbprint}: {reason}; remove it and restart SessionEnv so that "
            "Windows makes a new one",
            Thumbprint=thumbprint,
        )


def _folder(draft: _Draft, facts: Mapping[str, Any], unknown: frozenset[str], ctx: Context) -> bool:
    """The MachineKeys folder itself: True when a step for it was planned (nothing else in the key store then)."""
    folder = facts.get("machinekeys")
    if "machinekeys" in unknown or folder is None:
        return False
    if folder.get("exists") is False:
        draft.problems.append("the MachineKeys folder is missing")
        _reset(draft, facts, ctx, "the folder is missing: it is built anew")
        return True
    if folder.get("acl_ok") is False:
        draft.problems.append("SYSTEM or Administrators lack their default rights on MachineKeys (KB 278381)")
        draft.step(
            Action.REPAIR_FOLDER_ACL, "restore SYSTEM and Administrators full control on the folder only", Mode="folder"
        )
        return True
    return False


def _store_shown_broken(facts: Mapping[str, Any], unknown: frozenset[str], probe: str | None, ctx: Context) -> bool:
    """Windows' own certificate's key store is shown broken: a renewal (after its key container was set aside,
    or with no certificate at all) already ran in this request, the folder's ACL is right, and the listener still
    has no usable certificate: the probe says so and the events show the key failing (a missing fact is never
    evidence, and a working probe overrules every guest fact)."""
    renewed = any(key.startswith(Action.RENEW_CERTIFICATE.value + ":") for key in ctx.done)
    folder = facts.get("machinekeys") or {}
    if not renewed or "machinekeys" in unknown or folder.get("exists") is not True or folder.get("acl_ok") is not True:
        return False
    return _key_failure_shown(facts, probe)


def _key_failure_shown(facts: Mapping[str, Any], probe: str | None) -> bool:
    """The listener cannot use a key: the probe was offered no certificate and the System log recorded event
    1057 or 36870 in the last day."""
    events = facts.get("events") or {}
    logged = any((events.get(number) or {}).get("count") for number in KEY_EVIDENCE_EVENTS)
    return probe in PROBE_NO_KEY and bool(logged)


def _reset(draft: _Draft, facts: Mapping[str, Any], ctx: Context, why: str) -> None:
    """The whole-store rename, with its refusals: other certificates' keys, server roles, a recent backup."""
    folder = facts.get("machinekeys") or {}
    age = folder.get("backup_age_hours")
    if isinstance(age, int | float) and age < BACKUP_FRESH_HOURS:
        draft.refuse(
            Action.RESET_MACHINEKEYS,
            f"a MachineKeys backup {age:.1f} hours old exists: a reset already ran within a day, a second would only "
            "set aside what Windows made since",
        )
        return
    others = facts.get("other_keys")
    roles = facts.get("roles")
    critical = sorted(NEVER_RESET_ROLES & set(roles or []))
    if critical:
        draft.refuse(
            Action.RESET_MACHINEKEYS,
            f"this machine is a {' and '.join(critical)}: its keys in MachineKeys are never set aside, not even with "
            "force; the listener's key is left to an admin",
        )
        return
    if not ctx.force_keystore:
        if others is None or roles is None:
            draft.refuse(
                Action.RESET_MACHINEKEYS,
                "what else keeps keys in MachineKeys is unknown: rerun with forceKeyStore to reset anyway",
            )
            return
        if others.get("count", 0) > 0 or roles:
            names = ", ".join(others.get("names") or [])
            draft.refuse(
                Action.RESET_MACHINEKEYS,
                f"renaming MachineKeys would set aside {others.get('count', 0)} other key file(s)"
                f"{' (' + names + ')' if names else ''}{' and break roles ' + ', '.join(roles) if roles else ''}: "
                "rerun with forceKeyStore to accept that",
            )
            return
    draft.step(
        Action.RESET_MACHINEKEYS,
        f"{why}: rename MachineKeys (kept as a backup) and build a new one",
        Force="true" if ctx.force_keystore else "false",
        AllowSessions="true" if ctx.force else "false",
    )


def _event_evidence(facts: Mapping[str, Any]) -> str:
    events = facts.get("events") or {}
    seen = [f"{number} x{entry['count']}" for number, entry in sorted(events.items()) if entry.get("count")]
    return f" (events {', '.join(seen)})" if seen else ""


# --- firewall, TLS, listener settings ------------------------------------------------------------------------


def _firewall(draft: _Draft, facts: Mapping[str, Any], unknown: frozenset[str], probe: str | None) -> None:
    """By reachability: is there an allow path for the listener's port on an active profile? Changed only when
    the probe shows the port blocked (refused or timeout): a probe that got through proves a path exists."""
    firewall, config = facts.get("firewall"), facts.get("rdp_config")
    if "firewall" in unknown or firewall is None or config is None or config.get("port") is None:
        return
    port = int(config["port"])
    active = [name for name, state in firewall["profiles"].items() if state.get("active")]
    if not active or any(firewall["profiles"][name].get("enabled") is not True for name in active):
        return  # unknown active profile, or the firewall is off there: nothing blocks the port
    if firewall.get("allow_paths"):
        return
    draft.problems.append(f"no enabled inbound allow rule for TCP {port} on the active profile ({', '.join(active)})")
    rule = firewall.get("builtin_rule")
    if firewall.get("policy_copies", 0) > 0:
        draft.reports.append(
            f"a Group Policy copy of {BUILTIN_RULE} governs the firewall: its owner allows RDP; not touched"
        )
    elif rule is None:
        draft.reports.append(f"the built-in rule {BUILTIN_RULE} does not exist: not created")
    elif rule.get("port") != port:
        draft.reports.append(
            f"the listener uses TCP {port} but {BUILTIN_RULE} allows {rule.get('port')}: an admin opens {port}"
        )
    elif not _covers(str(rule.get("profiles", "")), active):
        draft.reports.append(f"{BUILTIN_RULE} is scoped to {rule.get('profiles')}, not the active profile: not widened")
    elif probe not in PROBE_BLOCKED:
        draft.reports.append(
            f"the probe says {probe}, not refused or timeout: the port is not shown blocked; the firewall stays"
        )
    else:
        draft.step(
            Action.ENABLE_FIREWALL_RULE,
            f"no allow path for TCP {port} on the {', '.join(active)} profile and the probe says {probe}; the local "
            f"built-in rule allows it{' from any remote address' if rule.get('any_ip') is not False else ''}",
            RuleName=BUILTIN_RULE,
            Port=str(port),
        )


def _covers(profiles: str, active: list[str]) -> bool:
    return profiles == "Any" or any(name in profiles for name in active)


def _tls(draft: _Draft, facts: Mapping[str, Any], unknown: frozenset[str], probe: str | None) -> None:
    """TLS 1.2 only when a handshake is shown failing: a machine hardened to TLS 1.3 only, with a probe that
    gets through, is a choice, not a fault."""
    tls = facts.get("tls")
    if "tls" in unknown or tls is None or tls.get("tls12_server") is not False:
        return
    events = facts.get("events") or {}
    schannel_failed = bool((events.get("36871") or {}).get("count"))
    if probe != "tls-handshake-failed" and not schannel_failed:
        draft.reports.append(
            f"server-side TLS 1.2 is disabled in SCHANNEL but no handshake is shown failing (probe {probe}, no event "
            "36871): left as configured"
        )
        return
    draft.problems.append("server-side TLS 1.2 is disabled in SCHANNEL")
    draft.step(Action.ENABLE_TLS12, "RDP clients negotiate TLS 1.2: enable its server side (takes effect at boot)")


def _listener_settings(draft: _Draft, facts: Mapping[str, Any]) -> None:
    config = facts.get("rdp_config") or {}
    if config.get("deny_connections") is True:
        draft.problems.append("Remote Desktop connections are turned off (fDenyTSConnections)")
        draft.reports.append("an admin or a policy turned Remote Desktop off: not turned on")
    port = config.get("port")
    if isinstance(port, int) and not 1 <= port <= 65535:
        draft.problems.append(f"PortNumber {port} is no TCP port")
        draft.reports.append("the listener's PortNumber is out of range: not changed")


# --- the gates every plan passes -----------------------------------------------------------------------------


def _gate(draft: _Draft, facts: Mapping[str, Any], ctx: Context) -> None:
    """Sessions, steps already run, and no escalation past a refusal in the certificate chain."""
    sessions = facts.get("sessions")
    kept: list[Step] = []
    chain_refused = any(r.action in CERTIFICATE_CHAIN for r in draft.refusals)
    for step in draft.steps:
        if chain_refused and step.action in CERTIFICATE_CHAIN:
            draft.refuse(step.action, "not tried: an earlier step of the certificate ladder was refused")
            continue
        refusal = _already_done(step, ctx) or _session_refusal(step, sessions, ctx)
        if refusal:
            draft.refuse(step.action, refusal)
            if step.action in CERTIFICATE_CHAIN:
                chain_refused = True
            continue
        kept.append(step)
    draft.steps = kept


def _already_done(step: Step, ctx: Context) -> str | None:
    if step.key in ctx.done:
        return "already ran in this request and the facts still call for it: repeating it would not help"
    return None


def _session_refusal(step: Step, sessions: Mapping[str, Any] | None, ctx: Context) -> str | None:
    """Remote sessions block every step that restarts a Remote Desktop service or leads to a reboot."""
    reboots = ctx.reboot_always or step.action in LEADS_TO_REBOOT
    if not (step.restarts_services or reboots) or ctx.force:
        return None
    what = "restarting Remote Desktop services or the reboot that follows"
    if sessions is None or sessions.get("remote") is None or sessions.get("cached") is None:
        return f"the remote sessions could not be counted: {what} is not risked (force overrides)"
    count = int(sessions["remote"]) + int(sessions["cached"])
    if count:
        return (
            f"{count} remote session(s) (logon types 10 and 12) would be dropped by {what}: rerun with force to proceed"
        )
    return None


def _time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
