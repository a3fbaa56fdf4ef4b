"""What a dry run says it would do, how many rounds a remediation may take, and how probe statuses read.

The decisions themselves (which repair, on which target, and why) live in `remediate.engine.decide`.
"""

from __future__ import annotations

from remediate.engine.decide import PROBE_NO_PATH, PROBE_OK
from remediate.model import Plan

__all__ = ["MAX_ROUNDS", "PROBE_NO_PATH", "PROBE_OK", "describe_plan"]

# A round is: the planned steps, a reboot when one is needed, verification. A next round runs only for steps
# the facts after verification call for that have not run yet in this request (the ladder's next rung).
MAX_ROUNDS = 3


def describe_plan(plan: Plan) -> list[str]:
    """What a dry run reports it would do."""
    if plan is Plan.FULL:
        return [
            "diagnose",
            "rename MachineKeys (refused without force when other keys or roles depend on it)",
            "reboot",
            "verify",
        ]
    if plan is Plan.RENEW_ONLY:
        return ["diagnose", "renew Windows' own certificate if it expires soon"]
    return [
        "diagnose (facts only)",
        "decide the least disruptive repairs for the facts, each on a named target",
        "reboot after a change that needs it",
        "verify",
        "take the ladder's next step only for new facts, never past a refusal",
    ]
