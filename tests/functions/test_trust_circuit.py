"""Whoever can post alerts cannot open the fleet-wide circuit breaker with one broken VM.

Through the real alert handler, Azurite, the queue and the worker: a VM whose remediation fails without changing
anything (a firewall policy the product must not override) is alerted again and again. Its repeats are held at
intake for the cooldown, the breaker counts VMs and only failures that changed something, and another VM's
alert is still repaired.
"""

from __future__ import annotations

from typing import Any

from remediate.ledger import Ledger
from remediate.model import VmId
from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert


def _alert(target: str) -> dict[str, Any]:
    return metric_alert(target)


def _posts_to(functions: Functions, vm: str) -> list[str]:
    prefix = vm.lower()
    return [
        e.operation
        for e in functions.emulator.log.entries()
        if e.method == "POST" and e.path.lower().startswith(prefix)
    ]


def test_repeated_alerts_for_one_failing_vm_do_not_open_the_circuit(functions: Functions) -> None:
    fleet = functions.emulator.fleet
    broken = fleet.by_scenario("cached-session")[0].resource_id
    victim = fleet.by_scenario("expired-certificate")[0].resource_id
    minimum = functions.app.settings.circuit_min_outcomes

    first = functions.post("alerts", _alert(broken))
    functions.host.drain(timeout=60)
    status = body(functions.get_status(body(first)["requestIds"][0]))
    assert status["outcome"] == "failed" and "nothing changed" in status["outcomeReason"], status
    runs = _posts_to(functions, broken).count("runCommand")
    for _ in range(minimum + 2):
        answer = functions.post("alerts", _alert(broken))
        functions.host.drain(timeout=60)
        assert answer.status_code == 200 and "requestIds" not in body(answer), body(answer)
        assert "changed nothing" in str(body(answer)), body(answer)
    assert _posts_to(functions, broken).count("runCommand") == runs  # held at intake: no Run Command again

    answer = functions.post("alerts", _alert(victim))
    functions.host.drain(timeout=60)
    status = body(functions.get_status(body(answer)["requestIds"][0]))
    assert status["outcome"] == "remediated", status
    assert "restart" in _posts_to(functions, victim)


def test_a_no_change_failure_holds_alerts_but_not_a_person(functions: Functions) -> None:
    broken = functions.emulator.fleet.by_scenario("cached-session")[0].resource_id
    functions.post("alerts", _alert(broken))
    functions.host.drain(timeout=60)
    ledger: Ledger = functions.app.queue.ledger
    assert ledger.vm_state(VmId.parse(broken)).last_unchanged_failure is not None

    held = functions.post("alerts", _alert(broken))
    assert "requestIds" not in body(held) and "changed nothing" in str(body(held))
    manual = functions.post("remediations", {"vms": [broken], "reason": "owner fixed the policy"})
    assert manual.status_code == 202, body(manual)
