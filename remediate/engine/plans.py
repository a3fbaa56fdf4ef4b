"""Which repair scripts a plan runs, in which order, and how probe statuses read.

Order matters: the key store must work before a certificate can be renewed, and the certificate before
the firewall and TLS settings are worth checking from outside.
"""

from __future__ import annotations

from remediate.model import Plan

REPAIR_ORDER = ("reset-machinekeys", "repair-machinekeys", "renew-certificate", "enable-firewall-rule", "enable-tls12")
# The last rung, tried only when verification still fails after the least disruptive repairs.
ESCALATION = ("reset-machinekeys", "renew-certificate")
FULL = ("reset-machinekeys", "renew-certificate")
PROACTIVE = ("renew-certificate",)

# Probe statuses: RDP works / there is no network path to tell / RDP is broken.
PROBE_OK = frozenset({"healthy", "expiring-soon"})
PROBE_NO_PATH = frozenset({"timeout", "unreachable", "no-address"})
# Findings and probe statuses that point at the key store or the certificate: only these justify escalating
# to the MachineKeys reset. A firewall rule or TLS setting that comes back is not fixed by renaming keys.
KEY_STORE_REPAIRS = frozenset({"repair-machinekeys", "reset-machinekeys", "renew-certificate"})
PROBE_KEY_STORE = frozenset({"no-certificate", "certificate-expired", "certificate-not-yet-valid"})
# What the outside view alone says needs doing, when the in-guest check missed it.
PROBE_REPAIRS = {
    "certificate-expired": "renew-certificate",
    "certificate-not-yet-valid": "renew-certificate",
    "expiring-soon": "renew-certificate",
    "no-certificate": "renew-certificate",
}


def repairs_for(plan: Plan, recommended: list[str], probe_status: str | None, force: bool) -> list[str]:
    """The repair scripts to run, in order. Empty means nothing to do."""
    if plan is Plan.FULL:
        return list(FULL)
    if plan is Plan.RENEW_ONLY:
        return list(PROACTIVE)
    wanted = set(recommended)
    if probe_status in PROBE_REPAIRS:
        wanted.add(PROBE_REPAIRS[probe_status])
    if not wanted and force:
        wanted.add("renew-certificate")
    return [name for name in REPAIR_ORDER if name in wanted]


def describe_plan(plan: Plan) -> list[str]:
    """What a dry run reports it would do."""
    if plan is Plan.FULL:
        return [*FULL, "reboot", "verify"]
    if plan is Plan.RENEW_ONLY:
        return list(PROACTIVE)
    return [
        "diagnose",
        "repairs for the findings",
        "reboot after any change",
        "verify",
        "escalate to MachineKeys reset if still broken",
    ]
