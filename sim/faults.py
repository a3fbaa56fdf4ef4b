"""Fault injection for the emulator: the failures Azure produces that the product must survive.

A fault is armed for one operation (optionally one VM) and fires `count` times, then disappears. HTTP-level
faults (throttling, server errors, dropped connections) apply to any operation and are taken before the
request is served; behavioural faults apply only to the operations where Azure shows them (a failed
long-running operation, an agent that is not ready, a script whose output is junk, a VM that never comes back).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

OPERATIONS = frozenset(
    {
        "getVm",
        "instanceView",
        "listVms",
        "runCommand",
        "restart",
        "getNic",
        "resourceGraph",
        "logsQuery",
        "operationStatus",
        "activityLog",
        "getAlert",
        "effectiveNsgs",
        "listJitPolicies",
    }
)

# Answered instead of the real response, whatever the operation. "409" is the Conflict Azure answers while
# another caller's operation holds the resource (for runCommand: another Run Command is executing).
HTTP_KINDS = frozenset({"409", "429", "500", "503", "reset"})

# Change what the operation does; each only makes sense where Azure can show it.
BEHAVIOUR_KINDS: dict[str, frozenset[str]] = {
    "lro-failed": frozenset({"runCommand", "restart"}),
    "agent-not-ready": frozenset({"runCommand"}),
    "garbage-output": frozenset({"runCommand"}),
    "oversized-output": frozenset({"runCommand"}),
    "never-returns": frozenset({"restart"}),
    # The restart is accepted, then its operation ends `Canceled` (a later operation preempted it). `Canceled`
    # is a terminal status of an asynchronous operation, with an error object (Azure/azure-resource-manager-rpc,
    # v1.0/async-api-reference.md, "Azure-AsyncOperation resource format"); azure-core treats it as failed.
    # Whether the VM restarted is not said: it may have (Microsoft Learn on VMStartTimedOut, "Troubleshoot
    # allocation / start failures": "The VM may still start successfully"), so the emulator restarts it.
    "lro-canceled": frozenset({"restart"}),
    # A hostile answer, not an Azure behaviour: both polling headers name another host (the emulator's
    # `foreign_polling_url`). Azure's polling headers are absolute URLs the client is told to follow
    # (learn.microsoft.com/azure/azure-resource-manager/management/async-operations: "Azure-AsyncOperation -
    # URL for checking the ongoing status of the operation"), so a client must decide which hosts it trusts.
    "foreign-polling-host": frozenset({"runCommand", "restart"}),
    # The request is served (the VM restarts, the command runs) but the caller gets a 500: a lost answer.
    "lost-answer": frozenset({"restart", "runCommand"}),
    # The caller may not read the subscription's Activity Log, and gets `200` with no events instead of `403`
    # (reported in Azure/azure-sdk-for-java issue 2097): an absence that proves nothing.
    "empty-answer": frozenset({"activityLog"}),
    # ARM forwarded the restart and gave up waiting for Compute's answer: the caller gets 504 GatewayTimeout
    # and the Activity Log `Started` then `Failed` (504), while Compute restarts the VM anyway (an RP's answer
    # after ARM's timeout is lost, not undone: Azure/azure-resource-manager-rpc, v1.0/common-api-details.md,
    # "Client Request Timeout"). Nothing in the log says whether the VM restarted.
    "gateway-timeout": frozenset({"restart"}),
}

KINDS = HTTP_KINDS | BEHAVIOUR_KINDS.keys()


@dataclass
class Fault:
    operation: str
    kind: str
    remaining: int
    vm: str | None  # lower-cased VM resource id, or None for any VM
    retry_after: int

    def matches(self, operation: str, vm: str | None) -> bool:
        return self.operation == operation and (self.vm is None or self.vm == vm)


class Faults:
    """The armed faults of one emulator; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._rate = 0.0
        self._rate_kinds: tuple[str, ...] = ()
        self._rng = random.Random(0)

    def at_random(self, rate: float, kinds: tuple[str, ...] = ("429", "500", "503", "reset"), seed: int = 0) -> None:
        """Besides the armed faults, answer a `rate` share of all requests with one of `kinds` (HTTP kinds, or
        `lro-failed`, which then fails that share of Run Commands and restarts). 0 turns it off."""
        unknown = sorted(set(kinds) - HTTP_KINDS - {"lro-failed"})
        if unknown or not 0.0 <= rate < 1.0:
            raise ValueError(f"random faults need a rate in [0, 1) and known kinds, not {rate} / {unknown}")
        with self._lock:
            self._rate, self._rate_kinds, self._rng = rate, tuple(kinds), random.Random(seed)

    def _random(self, operation: str, vm: str | None, allowed: frozenset[str]) -> Fault | None:
        with self._lock:
            kinds = [k for k in self._rate_kinds if k in allowed]
            if not kinds or self._rng.random() >= self._rate:
                return None
            return Fault(operation, self._rng.choice(kinds), 1, vm, 1)

    def add(self, operation: str, kind: str, count: int = 1, vm: str | None = None, retry_after: int = 1) -> None:
        """Arm a fault; raises ValueError for a combination Azure cannot produce."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: {', '.join(sorted(OPERATIONS))}")
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        if kind in BEHAVIOUR_KINDS and operation not in BEHAVIOUR_KINDS[kind]:
            allowed = ", ".join(sorted(BEHAVIOUR_KINDS[kind]))
            raise ValueError(f"fault {kind!r} applies only to {allowed}, not {operation!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        # Retry-After is whole seconds: azure-core crashes on a fraction and treats 0 as absent.
        if retry_after < 1:
            raise ValueError(f"retry_after must be a whole number of seconds >= 1, got {retry_after}")
        key = vm.lower().rstrip("/") if vm else None
        with self._lock:
            self._faults.append(Fault(operation, kind, count, key, retry_after))

    def take_http(self, operation: str, vm: str | None) -> Fault | None:
        """Consume the first armed HTTP-level fault for this request, if any (or draw a random one)."""
        return self._take(operation, vm, HTTP_KINDS) or self._random(operation, vm, HTTP_KINDS)

    def take(self, operation: str, kind: str, vm: str | None) -> bool:
        """Consume one firing of a behavioural fault; True when it fires."""
        if self._take(operation, vm, frozenset({kind})) is not None:
            return True
        allowed = frozenset({kind}) if operation in BEHAVIOUR_KINDS.get(kind, frozenset()) else frozenset()
        return self._random(operation, vm, allowed) is not None

    def _take(self, operation: str, vm: str | None, kinds: frozenset[str]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(operation, vm):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(fault) for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
