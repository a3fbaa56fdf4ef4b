"""Name the cause before touching the VM: probe + guest facts + events + network path in, a cause out.

Error 0x904 is what the client shows for many failures that no server-certificate repair fixes: a logon storm
exhausting the listener, an NSG or just-in-time rule that leaves no path, a port held by another program, a
listener bound to one adapter, a clock far off, a FIPS / security-layer / cipher-suite policy the client cannot
meet, an enterprise certificate only its owner renews, or a client-side problem. `classify` is the one place
that tells them apart. It is pure: what it reads is in its arguments, and it returns a `Diagnosis`: the cause,
the evidence for it, a disposition and the next step (what will fix it, and who does it).

Only the `repair` disposition carries the ladder's plan (`decide`); every other disposition carries no step, so
the workflow ends it without a change, without a reboot and without spending an attempt. docs/causes.md maps
each cause to its evidence, disposition, the owner's fix and the Microsoft source.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from remediate.azure.network import NetworkPath
from remediate.engine.decide import PROBE_NO_PATH, PROBE_OK, Action, Context, Decision, Step, decide

# Probe statuses that leave room for a network path problem: no answer at all (the emulator's stand-in for a
# dropped SYN is a connection accepted and then silence, "no-answer").
SILENT = PROBE_NO_PATH | {"no-answer"}


class Disposition(enum.StrEnum):
    REPAIR = "repair"  # one of the ladder's repairs fixes it
    REPORT_TO_OWNER = "report-to-owner"  # a policy or design only its owner changes
    UNDER_ATTACK = "under-attack"  # a logon storm: restrict the source, never reboot
    NOT_SERVER_SIDE = "not-server-side"  # the server answers RDP correctly: the client or its path
    UNKNOWN = "unknown"  # the evidence does not name a cause (or cannot be read): nothing is changed on a guess


# Failed logons (event 4625, logon types 10 and 3) per hour at which a VM counts as under a brute-force storm.
# Microsoft does not publish a number; one failed logon a second is far beyond any person mistyping a password
# and well within what internet-wide RDP scanners send (Microsoft Security blog, "brute-force RDP attacks").
STORM_PER_HOUR = 3600 // 4
# Probe statuses of a listener that did not serve the probe at all, before any TLS: what an exhausted listener
# shows (accepted and silent, refused, or no answer in time). A failure during or after the TLS handshake
# (`tls-handshake-failed`, `no-certificate`, a certificate verdict) is the certificate's or key's, never a storm's.
_BEFORE_TLS = frozenset({"no-answer", "timeout", "refused"})
# Events that prove the listener's certificate or its private key at fault (Microsoft Learn, "Troubleshoot Azure
# VM RDP connection issues by Event ID"): 1057 the self-signed certificate could not be created, 1058 the expired
# one could not be replaced (both TerminalServices-RemoteConnectionManager), 36870 Schannel could not access the
# TLS credential's private key (0x8009030D). A storm logs none of them: a brute-force logon attempt fails at
# authentication, after a handshake the server could complete.
KEY_FAULT_EVENTS = (1057, 1058, 36870)
# The ladder's causes that a certificate or key fault names (a storm never shadows them).
_KEY_FAULT_CAUSES = frozenset({"machinekeys", "listener-certificate"})
# What the probe sees when another program holds the port, or when nothing listens on the address it reached.
_NOT_THE_LISTENER = frozenset({"not-rdp", "no-answer"})
_NOTHING_LISTENS = frozenset({"refused", "timeout", "no-answer"})
# Statuses where TLS could not be agreed on, which a crypto policy explains.
_TLS_FAILED = frozenset({"tls-handshake-failed", "negotiation-failed", "tls-not-offered"})
# SecurityLayer 0: "RDP Security Layer" (native RDP encryption, no TLS), the value diagnose reports from the
# Group Policy key first, then RDP-Tcp (Learn, "Configure Server Authentication and Encryption Levels"; Group
# Policy "Require use of specific security layer for remote (RDP) connections").
RDP_SECURITY_LAYER = 0
FIPS_ENCRYPTION_LEVEL = 4  # MinEncryptionLevel 4: "FIPS Compliant"
_CAUSE_OF_ACTION: Mapping[Action, str] = {
    Action.REPAIR_FOLDER_ACL: "machinekeys",
    Action.GRANT_KEY_READ: "machinekeys",
    Action.REMOVE_KEY_DENY: "machinekeys",
    Action.RESET_MACHINEKEYS: "machinekeys",
    Action.RENEW_CERTIFICATE: "listener-certificate",
    Action.REPIN_CERTIFICATE: "listener-certificate",
    Action.ENABLE_FIREWALL_RULE: "guest-firewall",
    Action.ENABLE_TLS12: "tls12-disabled",
}


@dataclass(frozen=True)
class Observation:
    """Everything classify reads. `facts` is the diagnose summary (None: not read, e.g. before Run Command);
    `events` counts per event id from Log Analytics (4625 counts failed logons of the last hour), and
    `event_source` says where they came from, or why there are none (no workspace configured, unreadable)."""

    probe: Mapping[str, Any]
    facts: Mapping[str, Any] | None = None
    path: NetworkPath | None = None
    events: Mapping[int, int] = field(default_factory=dict)
    event_source: str = ""


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    disposition: Disposition
    evidence: tuple[str, ...]
    next_step: str
    decision: Decision | None = None  # the ladder's plan; only for REPAIR
    event_source: str = ""  # where the Log Analytics evidence came from, or why there was none

    @property
    def steps(self) -> tuple[Step, ...]:
        """What would change the VM: nothing unless the disposition is repair."""
        if self.disposition is not Disposition.REPAIR or self.decision is None:
            return ()
        return self.decision.steps

    def explain(self) -> str:
        evidence = "; ".join(self.evidence) or "no evidence"
        return f"cause {self.cause} ({self.disposition.value}): {evidence}; next: {self.next_step}"

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "disposition": self.disposition.value,
            "evidence": list(self.evidence),
            "nextStep": self.next_step,
            "eventSource": self.event_source,
        }


def classify(observation: Observation, context: Context) -> Diagnosis:
    """The cause of what the probe saw, from the evidence; the ladder's plan only when a repair fixes it."""
    return replace(_classify(observation, context), event_source=observation.event_source)


def _classify(observation: Observation, context: Context) -> Diagnosis:
    outside = classify_outside(observation)
    if outside is not None or observation.facts is None:
        return outside or _unknown_without_facts(observation)
    facts = observation.facts.get("findings") or {}
    status = _status(observation)
    ladder = decide(observation.facts, status, context)
    # The facts that prove a certificate or key fault come first: failed logons alone (type 3 includes SMB and
    # every other network logon) never explain away a listener that cannot use its key.
    key_fault = key_fault_evidence(observation, facts, ladder)
    storm = None if key_fault else _storm(observation, facts, status)
    if storm is not None:
        return storm
    for rule in (_clock, _port_taken, _lan_adapter, _security_policy, _crypto_policy):
        found = rule(observation, facts, status, context.now)
        if found is not None:
            return found
    return _ladder(observation, status, ladder, key_fault)


def key_fault_evidence(obs: Observation, facts: Mapping[str, Any], ladder: Decision) -> tuple[str, ...]:
    """What proves the listener's certificate or key at fault: events 1057 / 1058 / 36870 from the guest or Log
    Analytics, or the guest's facts calling for a certificate or key-store repair (or its refusal)."""
    events = tuple(text for number in KEY_FAULT_EVENTS if (text := _event_text(obs, facts, number)))
    actions = [s.action for s in ladder.steps] + [r.action for r in ladder.refusals]
    faulty = [a for a in actions if _CAUSE_OF_ACTION.get(a) in _KEY_FAULT_CAUSES]
    return events + ((f"the guest's facts call for {faulty[0].value}",) if faulty else ())


def classify_outside(observation: Observation) -> Diagnosis | None:
    """What can be named from outside the VM alone, before any Run Command: no network path to the port."""
    path = observation.path
    status = _status(observation)
    # Only silence can be an NSG's doing: a deny drops packets without an answer. A probe that got any answer
    # (a reset, a negotiation, a certificate) reached the VM, whatever the evaluated rules seem to say (the
    # evaluation may have assumed the wrong source address), so the guest is asked instead.
    if status not in SILENT or path is None or path.open is not False:
        return None
    where = f" in {path.nsg}" if path.nsg else ""
    evidence = [f"probe {status}", f"effective security rule {path.rule}{where} denies TCP to the RDP port"]
    if path.source:
        evidence.append(f"from {path.source}")
    if path.jit:
        evidence.append("a just-in-time policy governs the port")
        step = (
            "request just-in-time access for the function's address (or add its subnet to the policy's allowed "
            "sources); until then RDP cannot be tested from here and nothing is changed"
        )
    else:
        step = (
            f"the network owner allows TCP to the RDP port from the function's subnet{where} (above {path.rule}), "
            "or the remediation runs from a network that has a path; nothing is changed until then"
        )
    return Diagnosis("no-network-path", Disposition.UNKNOWN, tuple(evidence), step)


# --- the causes no repair of ours fixes ----------------------------------------------------------------------


def _storm(obs: Observation, facts: Mapping[str, Any], status: str) -> Diagnosis | None:
    """A storm is named only on all of: the failed-logon rate at or above STORM_PER_HOUR, a listener that did not
    serve the probe before TLS (silent, refused, timed out), and no fact proving a certificate or key fault (the
    caller checks that: no event 1057 / 1058 / 36870, no certificate or key-store repair called for)."""
    rate = _failed_logons(obs, facts)
    if rate is None or rate < STORM_PER_HOUR or status not in _BEFORE_TLS:
        return None
    return Diagnosis(
        "brute-force-storm",
        Disposition.UNDER_ATTACK,
        (
            f"probe {status}: the listener did not serve the probe before TLS",
            f"{rate} failed logons (event 4625, logon types 10 and 3) in the last hour ({_logon_sources(obs, facts)})",
            "no event 1057, 1058 or 36870 and no certificate or key fault in the guest's facts",
        ),
        "restrict the source: close TCP 3389 to the internet with an NSG rule, or use just-in-time access or "
        "Azure Bastion; a reboot would not help and is not done",
    )


def _clock(obs: Observation, facts: Mapping[str, Any], status: str, now: dt.datetime) -> Diagnosis | None:
    offset = (facts.get("clock") or {}).get("offset_seconds")
    if not isinstance(offset, int | float):
        return None
    dates = _certificate_dates(obs, facts)
    if dates is None:
        return None
    from remediate.probe import clock_skew  # the probe module loads cryptography: only when needed

    skew = clock_skew(dates[0], dates[1], now, dt.timedelta(seconds=offset))
    if skew is None:
        return None
    return Diagnosis(
        "clock-skew",
        Disposition.REPORT_TO_OWNER,
        (f"probe {status}", skew),
        "the VM's owner fixes its time source (the Hyper-V time provider VMICTimeProvider, or w32tm /resync "
        "against a reachable source); a certificate renewed on a wrong clock would be wrong again, so none is",
    )


def _port_taken(_obs: Observation, facts: Mapping[str, Any], status: str, _now: dt.datetime) -> Diagnosis | None:
    owner = facts.get("port_owner")
    port = (facts.get("rdp_config") or {}).get("port") or 3389
    if not owner or str(owner).lower() == "termservice" or status not in _NOT_THE_LISTENER:
        return None  # an RDP answer came from the port: whatever the owner's name, RDP holds it
    return Diagnosis(
        "port-taken",
        Disposition.REPORT_TO_OWNER,
        (f"probe {status}", f"{owner} listens on TCP {port}, not TermService"),
        f"the VM's owner stops or moves {owner} off TCP {port} (or gives RDP another PortNumber); "
        "rdp-remediate does not stop other programs",
    )


def _lan_adapter(_obs: Observation, facts: Mapping[str, Any], status: str, _now: dt.datetime) -> Diagnosis | None:
    adapter = (facts.get("rdp_config") or {}).get("lan_adapter")
    if not adapter or status not in _NOTHING_LISTENS:
        return None  # the listener answered on the address we reached: its binding includes our path
    return Diagnosis(
        "listener-bound-to-one-adapter",
        Disposition.REPORT_TO_OWNER,
        (f"probe {status}", f"RDP-Tcp LanAdapter is {adapter}: the listener serves one network adapter only"),
        "the VM's owner sets LanAdapter to 0 (all adapters) or binds it to the adapter of the primary IP "
        "configuration, then restarts TermService",
    )


def _security_policy(obs: Observation, facts: Mapping[str, Any], status: str, _now: dt.datetime) -> Diagnosis | None:
    """The server refused TLS (or offered only standard RDP security) and the guest proves why: SecurityLayer 0
    in effect (Group Policy value first, then RDP-Tcp). Without that fact the probe alone names nothing: the
    rules after this one, then `_unexplained`, say what is missing."""
    failure = obs.probe.get("negotiation_failure")
    config = facts.get("rdp_config") or {}
    if status != "tls-not-offered" or config.get("security_layer") != RDP_SECURITY_LAYER:
        return None
    evidence = [
        f"probe {status}" + (f" ({failure})" if failure else ""),
        "SecurityLayer 0 (RDP Security Layer, no TLS) in effect for RDP-Tcp (Group Policy or the listener's key)",
    ]
    level = config.get("min_encryption_level")
    if level == FIPS_ENCRYPTION_LEVEL or (facts.get("crypto") or {}).get("fips"):
        evidence.append(
            f"MinEncryptionLevel {level}, FIPS {'on' if (facts.get('crypto') or {}).get('fips') else 'off'}"
        )
    return Diagnosis(
        "security-layer-policy",
        Disposition.REPORT_TO_OWNER,
        tuple(evidence),
        "the policy's owner sets the RDP security layer back to TLS (SecurityLayer 2, 'Require use of specific "
        "security layer': SSL) and a MinEncryptionLevel the clients meet; rdp-remediate never changes security "
        "settings",
    )


def _crypto_policy(obs: Observation, facts: Mapping[str, Any], status: str, _now: dt.datetime) -> Diagnosis | None:
    crypto = facts.get("crypto") or {}
    schannel = {number: _event_count(obs, facts, number) for number in (36874, 36888)}
    tls_failed = status in _TLS_FAILED or any(schannel.values())
    if not tls_failed or (facts.get("tls") or {}).get("tls12_server") is False:
        return None  # TLS 1.2 switched off is the ladder's to repair
    evidence = [f"probe {status}"]
    suites, gcm = crypto.get("cipher_suites"), crypto.get("tls12_ecdhe_gcm")
    if isinstance(suites, int) and gcm == 0:
        evidence.append(f"the cipher-suite policy lists {suites} suite(s), none ECDHE with AES-GCM")
    if crypto.get("fips") and (facts.get("rdp_config") or {}).get("min_encryption_level") == FIPS_ENCRYPTION_LEVEL:
        evidence.append("FIPS mode with MinEncryptionLevel 4 (FIPS compliant)")
    if len(evidence) == 1:
        return None
    evidence += [f"Schannel {number} x{count}" for number, count in schannel.items() if count]
    return Diagnosis(
        "crypto-policy",
        Disposition.REPORT_TO_OWNER,
        tuple(evidence),
        "the policy's owner adds TLS 1.2 ECDHE AES-GCM suites to the SSL Cipher Suite Order policy (or removes "
        "the policy) and checks that clients meet the FIPS setting; rdp-remediate never changes crypto policy",
    )


# --- the ladder, and what is left ----------------------------------------------------------------------------


def _ladder(obs: Observation, status: str, decision: Decision, key_fault: tuple[str, ...]) -> Diagnosis:
    assert obs.facts is not None
    if decision.steps or decision.refusals:
        actions = [s.action for s in decision.steps] or [r.action for r in decision.refusals]
        cause = _CAUSE_OF_ACTION[actions[0]]
        evidence = (f"probe {status}", *decision.problems)
        if decision.steps:
            step = "repair: " + ", then ".join(f"{s.action.value} ({s.reason})" for s in decision.steps)
        else:
            step = "the repair was refused: " + "; ".join(r.reason for r in decision.refusals)
        return Diagnosis(cause, Disposition.REPAIR, evidence, step, decision)
    if decision.reports:
        listener = (obs.facts.get("findings") or {}).get("listener") or {}
        cause = "policy-certificate" if listener.get("hash_type") == 2 else "owner-setting"
        enterprise = [text for n in (1064, 1065) if (text := _event_text(obs, {}, n))]
        evidence = (f"probe {status}", *decision.problems, *enterprise)
        return Diagnosis(cause, Disposition.REPORT_TO_OWNER, evidence, "; ".join(decision.reports), decision)
    if decision.unknown:
        return Diagnosis(
            "facts-unreadable",
            Disposition.UNKNOWN,
            (f"probe {status}", *decision.unknown),
            "rerun when the guest answers (WMI, Run Command); nothing is changed on a guess",
            decision,
        )
    if status in PROBE_OK:
        return Diagnosis(
            "not-server-side",
            Disposition.NOT_SERVER_SIDE,
            (f"probe {status}: X.224 and TLS completed with a valid certificate", "the in-guest check is clean"),
            "the client's side: a CredSSP 'encryption oracle remediation' mismatch (patch the client), the "
            "client's TLS policy, or its own network path; nothing on the server needs a change",
            decision,
        )
    return _unexplained(obs, status, decision, key_fault)


def _unexplained(obs: Observation, status: str, decision: Decision, key_fault: tuple[str, ...]) -> Diagnosis:
    if status in PROBE_NO_PATH:
        open_path = obs.path is not None and obs.path.open is True
        evidence = [f"probe {status}", "the in-guest check is clean"]
        if open_path:
            evidence.append("the NIC's effective security rules allow the port")
        return Diagnosis(
            "unreachable",
            Disposition.UNKNOWN,
            tuple(evidence),
            "give the function a network path to the VM (VNet integration, routes, a firewall appliance on the "
            "way) so that RDP can be tested; nothing is changed",
            decision,
        )
    evidence = [f"probe {status}: {obs.probe.get('detail', '')}".rstrip(": "), "the in-guest check found nothing"]
    evidence += [*key_fault, *_missing(obs, status)]
    return Diagnosis(
        "unexplained",
        Disposition.UNKNOWN,
        tuple(evidence),
        "an admin looks at the listener configuration and the client side; nothing is changed on a guess",
        decision,
    )


def _missing(obs: Observation, status: str) -> list[str]:
    """What a cause the probe points at would need and the guest's facts do not show."""
    if status != "tls-not-offered":
        return []
    config = ((obs.facts or {}).get("findings") or {}).get("rdp_config") or {}
    seen = config.get("security_layer")
    read = "was not read" if seen is None else f"is {seen}"
    needed = "missing for security-layer-policy: SecurityLayer 0 (RDP Security Layer) in RDP-Tcp or its Group Policy"
    return [f"{needed}; the guest's SecurityLayer {read}"]


def _unknown_without_facts(obs: Observation) -> Diagnosis:
    return Diagnosis(
        "no-facts",
        Disposition.UNKNOWN,
        (f"probe {_status(obs)}", "the guest's facts were not read"),
        "run diagnose",
    )


# --- evidence helpers ----------------------------------------------------------------------------------------


def _status(obs: Observation) -> str:
    return str(obs.probe.get("status") or "unknown")


def _failed_logons(obs: Observation, facts: Mapping[str, Any]) -> int | None:
    """The larger of the guest's own count and Log Analytics' (both count event 4625 of the last hour)."""
    guest = facts.get("failed_logons")
    counts = [int(guest.get("type10", 0)) + int(guest.get("type3", 0))] if isinstance(guest, Mapping) else []
    if 4625 in obs.events:
        counts.append(int(obs.events[4625]))
    return max(counts) if counts else None


def _logon_sources(obs: Observation, facts: Mapping[str, Any]) -> str:
    guest = facts.get("failed_logons")
    counts = [f"guest {int(guest.get('type10', 0)) + int(guest.get('type3', 0))}"] if isinstance(guest, Mapping) else []
    if 4625 in obs.events:
        counts.append(f"Log Analytics {int(obs.events[4625])}")
    return ", ".join(counts)


def _event_count(obs: Observation, facts: Mapping[str, Any], number: int) -> int:
    guest = ((facts.get("events") or {}).get(str(number)) or {}).get("count", 0)
    return max(int(guest or 0), int(obs.events.get(number, 0)))


def _event_text(obs: Observation, facts: Mapping[str, Any], number: int) -> str | None:
    """`event N xC` with where each count came from (the guest's System log, Log Analytics); None when none."""
    guest = int(((facts.get("events") or {}).get(str(number)) or {}).get("count", 0) or 0)
    logs = int(obs.events.get(number, 0))
    sources = [f"guest x{guest}"] * bool(guest) + [f"Log Analytics x{logs}"] * bool(logs)
    return f"event {number} x{max(guest, logs)} ({', '.join(sources)})" if sources else None


def _certificate_dates(obs: Observation, facts: Mapping[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    """The listener certificate's dates: as the probe saw it, else as the guest reports it."""
    for source in (obs.probe.get("certificate") or {}, facts.get("listener") or {}):
        not_before, not_after = _time(source.get("not_before")), _time(source.get("not_after"))
        if not_before is not None and not_after is not None:
            return not_before, not_after
    return None


def _time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
