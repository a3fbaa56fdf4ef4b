"""The HTTP intake must stay cheap to import: the Function's cold start pays for every module it pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("azure", "requests", "cryptography", "jsonschema", "tenacity", "urllib3", "hypothesis")


def loaded_modules(statement: str) -> set[str]:
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_intake_service_imports_no_sdk_or_heavy_library() -> None:
    modules = loaded_modules("import remediate.intake.service")

    assert "remediate.intake.service" in modules
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_alert_command_imports_no_sdk_until_a_lookup_is_needed() -> None:
    modules = loaded_modules("import remediate.cli.alert")

    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
