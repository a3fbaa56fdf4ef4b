"""How unkind the emulator is: the answer shapes and timings real Azure shows, chosen per run (and per VM).

The defaults are the realistic ones: long-running operations answer without `Retry-After`, operation URLs
carry signed query parameters a client must follow verbatim, VMs have a secondary NIC (and a secondary IP
configuration) listed before the primary one, a restart operation completes long before the guest is back
while the agent's old `Ready` lingers, a Run Command answers 409 for a moment after it succeeded, and Windows
output ends its lines with CRLF. Kinder settings exist only to isolate one behaviour in a test.
"""

from __future__ import annotations

from dataclasses import dataclass

# How Run Command and restart answer the POST (azure-rest-api-specs, Microsoft.Compute ComputeRP stable
# 2024-07-01 examples runCommandExamples/VirtualMachineRunCommand.json and
# virtualMachineExamples/VirtualMachine_Restart_MaximumSet_Gen.json list both 200 and 202 + Location):
#   async     202 with Azure-AsyncOperation AND Location, no Retry-After (recorded azure-cli / azure-sdk traffic)
#   location  202 with Location only; the Location URL answers 202 until done, then 200 with the result
#   sync      200 with the result at once (the request is held until the operation is done)
ANSWER_STYLES = ("async", "location", "sync")


@dataclass(frozen=True)
class Realism:
    answer_style: str = "async"
    retry_after: bool = False  # a polling hint on LRO answers: real Compute sends none
    signed_urls: bool = True  # operation URLs carry p=, t=, c=, s=, h= and are refused when altered
    secondary_nics: int = 1  # NICs listed before each VM's primary NIC (and one extra IP config before its primary)
    restart_early: bool = True  # the restart operation ends at once; the guest boots in its own time
    crlf: bool = True  # Run Command output with Windows line ends
    logs_partial_error: bool = False  # Log Analytics adds `error: PartialError` beside its tables
    logs_foreign_rows: bool = True  # Log Analytics rows with a blank or an Arc `_ResourceId`

    def __post_init__(self) -> None:
        if self.answer_style not in ANSWER_STYLES:
            raise ValueError(f"answer_style must be one of {', '.join(ANSWER_STYLES)}, not {self.answer_style!r}")
        if self.secondary_nics < 0:
            raise ValueError("secondary_nics must be >= 0")


KIND = Realism(
    answer_style="async",
    retry_after=True,
    signed_urls=False,
    secondary_nics=0,
    restart_early=False,
    crlf=False,
    logs_foreign_rows=False,
)
"""The emulator as it was before it modelled these behaviours: for comparisons only, never the default."""
