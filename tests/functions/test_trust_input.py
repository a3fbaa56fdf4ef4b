"""Bad input is a 4xx naming the field, through the real handlers, ledger (Azurite) and queue; never a 5xx.

A 503 tells an action group to retry the same delivery for ever, so text that cannot be stored or hashed (lone
UTF-16 surrogates, NULs and other control characters, invalid UTF-8) is the caller's error, as is a body with a
key given twice (`"dryRun": true, "dryRun": false` must not quietly become a live run).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.functions.conftest import Functions, body
from tests.functions.test_function_app import metric_alert


def _vm(functions: Functions) -> str:
    return functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id


def _refused(response: Any, field: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.get_body()
    error: dict[str, Any] = body(response)["error"]
    assert error["field"] == field and field in error["message"], error
    return error


# JSON text with escapes that decode to characters storage cannot hold (json.dumps would escape them the same).
BAD_TEXT = ["\\ud800", "x\\udfffy", "\\u0000", "a\\u0001b", "\\uffff"]


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_unstorable_text_in_an_alert_id_is_a_400_naming_it(functions: Functions, bad: str) -> None:
    text = json.dumps(metric_alert(_vm(functions), alert_id="ALERT-ID")).replace("ALERT-ID", f"alert-{bad}")
    response = functions.post("alerts", text.encode())
    _refused(response, "data.essentials.alertId")
    assert functions.queued() == 0


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_unstorable_text_anywhere_in_a_runbook_body_is_a_400_naming_it(functions: Functions, bad: str) -> None:
    text = '{"vms": ["%s"], "reason": "fix \\"%s\\" now"}' % (_vm(functions), bad)  # noqa: UP031
    _refused(functions.post("remediations", text.encode()), "reason")
    assert functions.queued() == 0


def test_an_unstorable_key_is_named(functions: Functions) -> None:
    alert = metric_alert(_vm(functions))
    text = json.dumps(alert).replace('"customProperties"', '"custom\\ud83dProperties"')
    error = _refused(functions.post("alerts", text.encode()), "data.custom\ud83dProperties".replace("\ud83d", "\ufffd"))
    assert "cannot be stored" in error["message"]


def test_invalid_utf8_is_a_400(functions: Functions) -> None:
    raw = json.dumps(metric_alert(_vm(functions))).encode().replace(b"vm-availability", b"vm-\xff\xfe")
    _refused(functions.post("alerts", raw), "body")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"vms": ["%(vm)s"], "dryRun": true, "dryRun": false}', "dryRun"),
        ('{"vms": ["%(vm)s"], "vms": ["%(vm)s"]}', "vms"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it(functions: Functions, text: str, field: str) -> None:
    error = _refused(functions.post("remediations", (text % {"vm": _vm(functions)}).encode()), field)
    assert error["code"] == "DuplicateKey"
    assert functions.queued() == 0


def test_a_duplicate_key_deep_in_an_alert_is_refused(functions: Functions) -> None:
    text = json.dumps(metric_alert(_vm(functions)))
    text = text.replace('"severity": "Sev1"', '"severity": "Sev1", "severity": "Sev4"')
    assert _refused(functions.post("alerts", text.encode()), "severity")["code"] == "DuplicateKey"


def test_a_status_request_id_with_unicode_digits_is_a_400(functions: Functions) -> None:
    response = functions.get_status("\u0661\u0662\u0663")  # Arabic-Indic digits: isalnum() but not an id
    _refused(response, "request_id")


@pytest.mark.parametrize("suffix", ["\n/", "\n", "/\n", " \n"])
def test_a_trailing_newline_does_not_make_a_vm_another_vm(functions: Functions, suffix: str) -> None:
    """A VM id with a final newline is either refused or the same VM (its cooldown, its dedup): never a new key
    (a regex's `$` matches before a final newline, which once let `vm\\n` pass as a distinct VM name)."""
    vm = functions.emulator.fleet.by_scenario("expired-certificate")[0].resource_id
    first = functions.post("alerts", metric_alert(vm))
    functions.host.drain(timeout=60)
    assert body(functions.get_status(body(first)["requestIds"][0]))["outcome"] == "remediated"
    arm_before = len(functions.emulator.log.entries())

    for route in ("alerts", "remediations"):
        if route == "alerts":
            doc: dict[str, Any] = metric_alert(vm, alert_id=f"/alerts/{route}{suffix!r}")
            doc["data"]["essentials"]["alertTargetIDs"] = [vm + suffix]
        else:
            doc = {"vms": [vm + suffix]}
        answer = functions.post(route, doc)
        assert answer.status_code in (200, 202, 400), (route, answer.get_body())
        named = [
            *body(answer).get("vms", []),
            *(item.get("target", item.get("vm")) for item in body(answer).get("ignored", [])),
        ]
        assert set(named) <= {vm}, (route, body(answer))  # the same VM, spelled canonically, or refused
    functions.host.drain(timeout=60)
    assert len(functions.emulator.log.entries()) == arm_before  # nothing reached the VM during its cooldown
