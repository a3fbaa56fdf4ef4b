"""`rdp-remediate report --html`: a self-contained file that a real headless Chromium renders without a console
error and without reaching the network (the page's Content-Security-Policy makes any fetch a console error, and
the browser's resolver is pointed nowhere); a screenshot is left in ci-artifacts/ for a person to look at."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediate.azure.clients import reset_clients
from remediate.cli import main
from remediate.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "ci-artifacts"
ID = (
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-prod"
    "/providers/Microsoft.Compute/virtualMachines/"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, and off the network: no background services, every host name resolves to nothing.
OFFLINE_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
]
CONSOLE = re.compile(r":CONSOLE[:(]")


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return subprocess.run(
        [CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, product_env: dict[str, str]) -> Iterator[None]:
    for name, value in product_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    reset_clients()
    yield
    get_settings.cache_clear()
    reset_clients()


def test_the_console_check_catches_a_page_that_reaches_out(tmp_path: Path) -> None:
    from remediate.cli.report_html import CSP

    page = tmp_path / "bad.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}"></head>'
        '<body><img src="https://example.com/pixel.png"></body></html>'
    )
    messages = console_messages(chromium(page, tmp_path / "profile", "--dump-dom").stderr)
    assert any("example.com" in m and "Content Security Policy" in m for m in messages)


def test_the_report_renders_in_chromium_with_no_console_error(
    cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--mode", "report", "--json"]) == 0
    for vm in ("vm-expired-certificate", "vm-keystore-corrupt", "vm-healthy", "vm-linux"):
        main(["run", "--vm", ID + vm, "--json"])
    capsys.readouterr()
    page = tmp_path / "report.html"
    assert main(["report", "--since", "1", "--html", str(page)]) == 0
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch, whatever the browser

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    rendered = chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2600")
    assert console_messages(rendered.stderr) == []
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    dom = chromium(page, tmp_path / "profile2", "--dump-dom")
    assert console_messages(dom.stderr) == []
    text = dom.stdout
    assert "Listener certificates expiring, by week" in text and text.count("<svg") == 2
    assert text.count('class="card"') == 4  # one evidence card per request
    assert "probe before" in text and "certificate-expired" in text  # the expired VM's probe before the repair
    assert "Windows makes a new one" in text and "listener now" in text  # the renewal's undo, the new certificate
    assert "a restart: nothing to undo" in text
    shutil.copy(page, ARTIFACTS / "report.html")


def test_a_report_of_one_request_and_of_an_unknown_one(
    cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["run", "--vm", ID + "vm-firewall-closed", "--json"])
    request_id = json.loads(capsys.readouterr().out)["requestId"]
    page = tmp_path / "one.html"
    assert main(["report", "--request", request_id, "--html", str(page)]) == 0
    html = page.read_text()
    assert html.count('class="card"') == 1 and f"request {request_id}" in html
    assert "Disable-NetFirewallRule -Name RemoteDesktop-UserMode-In-TCP" in html  # the firewall change's undo
    assert "Listener certificates expiring" not in html  # no sweep recorded: no forecast pretended
    assert main(["report", "--request", "0" * 32, "--html", str(tmp_path / "none.html")]) == 2
    assert "no request" in capsys.readouterr().err
