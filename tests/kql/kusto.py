"""Every KQL text the project ships, and Microsoft's Kusto language service run over them (tests/kql/check.js).

The texts: the queries in remediate/azure/queries (Resource Graph and Log Analytics), the queries inside the
Bicep files (the log alert rule, the workbook), and the ```kql / ```kusto blocks of the docs. Each is checked
against the declared schema of the table it reads (schemas.json), so an unknown table, column or function, or a
syntax error, fails the suite. Nothing is executed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHECKER = HERE / "check.js"
PACKAGE = REPO / "node_modules" / "@kusto" / "language-service-next"
# The values a parameterised query is sent with (see remediate/azure/inventory.py).
PARAMETERS = {
    "names": "'VM-A', 'VM-B'",
    "vm": (
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg"
        "/providers/Microsoft.Compute/virtualMachines/vm1"
    ),
}
_BICEP_STRING = re.compile(r"'''\n?(.*?)'''", re.DOTALL)
_FENCE = re.compile(r"^[ \t]*```(?:kql|kusto)[ \t]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Query:
    name: str  # where it comes from, for messages
    database: str  # which declared schema it reads
    text: str


def schemas() -> dict[str, dict[str, str]]:
    data = json.loads((HERE / "schemas.json").read_text(encoding="utf-8"))
    return {name: tables for name, tables in data.items() if not name.startswith("_")}


def _database_of(text: str, databases: dict[str, dict[str, str]]) -> str | None:
    """The schema whose table the query starts from (its first word), or None when it is not a query."""
    lines = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("//")]
    first = lines[0].split("|")[0].strip() if lines else ""
    return next((db for db, tables in databases.items() if first in tables), None)


def shipped_queries() -> list[Query]:
    databases = schemas()
    found: list[Query] = []
    for path in sorted((REPO / "remediate" / "azure" / "queries").glob("*.kql")):
        text = path.read_text(encoding="utf-8")
        for key, value in PARAMETERS.items():
            text = text.replace("{" + key + "}", value)
        found.append(Query(str(path.relative_to(REPO)), _database_of(text, databases) or "?", text))
    for path in sorted((REPO / "infra").rglob("*.bicep")):
        for index, match in enumerate(_BICEP_STRING.finditer(path.read_text(encoding="utf-8"))):
            database = _database_of(match.group(1), databases)
            if database is not None:
                found.append(Query(f"{path.relative_to(REPO)}#{index}", database, match.group(1)))
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for index, match in enumerate(_FENCE.finditer(path.read_text(encoding="utf-8"))):
            text = match.group(1)
            found.append(Query(f"{path.relative_to(REPO)}#{index}", _database_of(text, databases) or "?", text))
    return found


def check(queries: list[Query]) -> dict[str, list[dict[str, Any]]]:
    """Diagnostics per query name (empty list: clean)."""
    node = shutil.which("node")
    if node is None or not PACKAGE.is_dir():
        raise RuntimeError("the KQL check needs node and the npm package @kusto/language-service-next (npm install)")
    request = {
        "databases": schemas(),
        "queries": [{"name": q.name, "database": q.database, "text": q.text} for q in queries],
    }
    done = subprocess.run(
        [node, str(CHECKER)], input=json.dumps(request), capture_output=True, text=True, check=True, timeout=120
    )
    return {item["name"]: item["diagnostics"] for item in json.loads(done.stdout)}
