"""Every shipped KQL text parses and type-checks with Microsoft's Kusto language service, against the declared
schemas of the tables it reads; a misspelt column is caught."""

from __future__ import annotations

import dataclasses

import pytest

from tests.kql.kusto import Query, check, schemas, shipped_queries


def test_the_shipped_texts_are_found() -> None:
    names = {query.name for query in shipped_queries()}
    assert {
        "remediate/azure/queries/rdp_events.kql",
        "remediate/azure/queries/windows_vms.kql",
        "remediate/azure/queries/vms_by_computer_name.kql",
    } <= names
    assert any(name.startswith("infra/modules/alerts.bicep#") for name in names)  # the alert rule's query
    assert any(name.startswith("infra/modules/workbook.bicep#") for name in names)
    assert any(name.startswith("docs/") for name in names)


def test_every_query_reads_a_declared_table() -> None:
    unknown = [query.name for query in shipped_queries() if query.database not in schemas()]
    assert not unknown, f"these KQL texts start from a table with no declared schema: {unknown}"


def test_every_shipped_query_has_zero_diagnostics() -> None:
    results = check(shipped_queries())
    problems = {name: found for name, found in results.items() if found}
    assert not problems, problems


@pytest.mark.parametrize(
    ("name", "wrong", "code"),
    [
        ("remediate/azure/queries/rdp_events.kql", ("EventID", "EventId"), "KS142"),  # unknown column
        ("remediate/azure/queries/windows_vms.kql", ("resourceGroup,", "resourcegroup,"), "KS142"),
        ("remediate/azure/queries/windows_vms.kql", ("tolower(", "tolowr("), "KS"),  # unknown function
    ],
)
def test_a_misspelt_name_fails(name: str, wrong: tuple[str, str], code: str) -> None:
    query = next(q for q in shipped_queries() if q.name == name)
    assert wrong[0] in query.text
    broken = dataclasses.replace(query, text=query.text.replace(wrong[0], wrong[1], 1))
    (found,) = check([broken]).values()
    assert any(d["code"].startswith(code) and d["severity"] == "Error" for d in found), found
    assert check([query])[name] == []


def test_a_syntax_error_fails() -> None:
    broken = Query("broken", "loganalytics", "Event | where EventID == | take 1")
    (found,) = check([broken]).values()
    assert any(d["severity"] == "Error" for d in found)
