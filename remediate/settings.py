"""Every setting rdp-remediate reads, parsed once from the environment.

`SPECS` is the single source of truth: the README's configuration table, the Bicep app settings check and
`Settings.from_env` all read it. Add a setting here (name, default, meaning) and nowhere else.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from remediate import changewindow
from remediate.model import (
    ConfigurationError,
    azure_key,
    fixed_segment,
    valid_resource_group_name,
    valid_subscription_id,
)


@dataclass(frozen=True)
class SettingSpec:
    """One environment variable: its name, its default as text, and what it means."""

    env: str
    attr: str
    default: str
    meaning: str
    parse: Callable[[str], Any] = str


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a whole number >= 0, got {text!r}")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {text!r}")
        return value

    return parse


def _triggers(text: str) -> tuple[str, ...]:
    triggers = tuple(part.lower() for part in _csv(text))
    unknown = [t for t in triggers if t not in ("alert", "runbook", "sweep")]
    if unknown:
        raise ValueError(f"unknown trigger {unknown[0]!r}: use alert, runbook, sweep")
    return triggers


def _percent(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise ValueError(f"expected a percentage in (0, 100], got {text!r}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"expected a ratio in (0, 1], got {text!r}")
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _scopes(text: str) -> tuple[str, ...]:
    scopes = []
    for part in _csv(text):
        pieces = part.strip("/").split("/")
        if (
            len(pieces) not in (2, 4)
            or not fixed_segment(pieces[0], "subscriptions")
            or not valid_subscription_id(pieces[1])
            or (len(pieces) == 4 and not fixed_segment(pieces[2], "resourcegroups"))
            or (len(pieces) == 4 and not valid_resource_group_name(pieces[3]))
        ):
            raise ValueError(
                f"scope {part!r} is neither /subscriptions/GUID nor /subscriptions/GUID/resourceGroups/NAME"
            )
        # Kept in Azure's comparison form (`azure_key`): `VmId.in_scope` compares in that form too.
        scopes.append(azure_key("/" + "/".join(pieces)))
    return tuple(scopes)


def _tag(text: str) -> tuple[str, str] | None:
    """`name=value`, or `name` alone (any value), or empty (no tag)."""
    text = text.strip()
    if not text:
        return None
    name, _, value = text.partition("=")
    if not name.strip():
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


def _window(text: str) -> str:
    """A change window in the documented format (checked now, not when a reboot needs it); empty: any time."""
    if text.strip():
        changewindow.parse(text)  # ValueError saying what is wrong, with the format and an example
    return text.strip()


def _https_url(text: str) -> str:
    parsed = urlparse(text.strip())
    if parsed.scheme != "https" or not parsed.hostname:
        raise ValueError(f"expected an https:// URL, got {text!r}")
    return text.strip().rstrip("/")


SPECS: tuple[SettingSpec, ...] = (
    # --- Where it acts -----------------------------------------------------------------------------------
    SettingSpec(
        "RDPR_SCOPES",
        "scopes",
        "",
        "Comma-separated subscriptions (`/subscriptions/ID`) and resource groups "
        "(`/subscriptions/ID/resourceGroups/NAME`) the product may act on. Empty means nothing is in "
        "scope: every request is skipped with that reason.",
        _scopes,
    ),
    SettingSpec(
        "RDPR_OPT_OUT_TAG",
        "opt_out_tag",
        "rdp-remediate=off",
        "A VM carrying this tag (`NAME=VALUE`, or `NAME` for any value) is never touched.",
        _tag,
    ),
    SettingSpec(
        "RDPR_OPT_IN_TAG",
        "opt_in_tag",
        "rdp-remediate=on",
        "The tag a VM must carry when `RDPR_REQUIRE_OPT_IN` is true.",
        _tag,
    ),
    SettingSpec(
        "RDPR_REQUIRE_OPT_IN",
        "require_opt_in",
        "false",
        "When true, only VMs carrying `RDPR_OPT_IN_TAG` are remediated.",
        _bool,
    ),
    # --- How careful it is -------------------------------------------------------------------------------
    SettingSpec(
        "RDPR_DRY_RUN",
        "dry_run",
        "false",
        "When true, every remediation only plans: no Run Command, no restart.",
        _bool,
    ),
    SettingSpec(
        "RDPR_COOLDOWN_MINUTES",
        "cooldown_minutes",
        "60",
        "Minimum time between two remediations of the same VM.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_MAX_ATTEMPTS",
        "max_attempts",
        "3",
        "Remediations of one VM allowed within `RDPR_ATTEMPT_WINDOW_HOURS` (no reboot loops).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_ATTEMPT_WINDOW_HOURS",
        "attempt_window_hours",
        "24",
        "The window over which `RDPR_MAX_ATTEMPTS` counts.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_MAX_CONCURRENT",
        "max_concurrent",
        "10",
        "Remediations one CLI run starts at the same time (its threads); the fleet-wide bound is `RDPR_MAX_ACTIVE`.",
        _positive_int,
    ),
    # --- Fleet-wide controls (docs/operations.md) ---------------------------------------------------------
    SettingSpec(
        "RDPR_MAX_ACTIVE",
        "max_active",
        "10",
        "VMs in an active remediation at once across every Function instance and CLI run (leases in the ledger).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_MAX_ACTIVE_PER_SUBSCRIPTION",
        "max_active_per_subscription",
        "0",
        "Also at most this many active remediations per subscription (0: only the global `RDPR_MAX_ACTIVE`).",
        _non_negative_int,
    ),
    SettingSpec(
        "RDPR_SLOT_RETRY_SECONDS",
        "slot_retry_seconds",
        "30",
        "How long a queued request that found every slot taken stays invisible before it is tried again.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_STORM_MAX_PER_HOUR",
        "storm_max_per_hour",
        "50",
        "Storm guard: new remediations alerts, runbooks and sweeps may start in any rolling hour; "
        "more are held (at most 1000).",
        _bounded_int(1, 1000),
    ),
    SettingSpec(
        "RDPR_STORM_MAX_PERCENT",
        "storm_max_percent",
        "20",
        "Storm guard: also at most this share of the fleet in scope (as the last sweep counted it) per hour.",
        _percent,
    ),
    SettingSpec(
        "RDPR_APPROVAL_TRIGGERS",
        "approval_triggers",
        "",
        "Triggers whose requests wait for a person's approval after a read-only diagnosis (`alert`, `runbook`, "
        "`sweep`, comma-separated; empty: none).",
        _triggers,
    ),
    SettingSpec(
        "RDPR_APPROVAL_EXPIRY_MINUTES",
        "approval_expiry_minutes",
        "240",
        "How long a diagnosed request waits for approval before it expires (skipped; a new trigger starts over).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_APPROVER_ROLE",
        "approver_role",
        "Remediation.Approver",
        "The Microsoft Entra app role a caller needs to approve, reject or release a held request (from the App "
        "Service principal's roles).",
    ),
    SettingSpec(
        "RDPR_OPERATOR_ROLE",
        "operator_role",
        "Remediation.Operator",
        "The Microsoft Entra app role a caller needs to request remediations over HTTP or read their status "
        "(the approver role may read status too).",
    ),
    SettingSpec(
        "RDPR_REBOOT_WINDOW",
        "reboot_window",
        "",
        "Default change window for reboots, e.g. `Sat 02:00-06:00 Europe/Berlin` (docs/operations.md); empty: any "
        "time. A VM's `RDPR_WINDOW_TAG` tag overrides it. Checked at start: a malformed value stops the app.",
        _window,
    ),
    SettingSpec(
        "RDPR_WINDOW_MARGIN_SECONDS",
        "window_margin_seconds",
        "600",
        "A reboot starts only while at least this much of its change window is left, so the VM is back before "
        "the window ends (the default is `RDPR_BOOT_TIMEOUT_SECONDS`' default); otherwise it waits for the next.",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_WINDOW_TAG",
        "window_tag",
        "rdp-remediate-window",
        "Name of the VM tag that holds the VM's own change window for reboots.",
    ),
    SettingSpec(
        "RDPR_REBOOT_POLICY",
        "reboot_policy",
        "when-required",
        "`always`: reboot after any change; `when-required`: only when a script says so.",
        _choice("always", "when-required"),
    ),
    SettingSpec(
        "RDPR_LOCK_MINUTES",
        "lock_minutes",
        "45",
        "How long a per-VM lock holds before another worker may take it over.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_LEASE_SECONDS",
        "lease_seconds",
        "60",
        "How long a request's execution lease outlives its last heartbeat (a third of it) before another "
        "delivery of the request may take over.",
        _positive_int,
    ),
    # --- Time limits -------------------------------------------------------------------------------------
    SettingSpec(
        "RDPR_WORKFLOW_DEADLINE_MINUTES",
        "workflow_deadline_minutes",
        "25",
        "Deadline for one VM's whole workflow (below the Function timeout).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_BOOT_TIMEOUT_SECONDS",
        "boot_timeout_seconds",
        "600",
        "How long to wait for a rebooted VM to be running with its agent ready, and for RDP to answer after.",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_RETRY_AFTER_CAP_SECONDS",
        "retry_after_cap_seconds",
        "30",
        "Longest `Retry-After` the Azure clients will sleep before retrying.",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_RETRY_TOTAL",
        "retry_total",
        "6",
        "Retries of a throttled or failed Azure call (429, 5xx, connection errors) before the step gives up.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_RETRY_BACKOFF_SECONDS",
        "retry_backoff_seconds",
        "0.8",
        "Base of the exponential backoff between those retries (capped at 60 s a wait).",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_RESTART_EVIDENCE_SECONDS",
        "restart_evidence_seconds",
        "1500",
        "How long after a restart was sent the Activity Log must still show no restart with its correlation id "
        "before the restart is taken as not accepted (and sent once more); the log lags up to 20 minutes.",
        _non_negative_float,
    ),
    # --- RDP probe ---------------------------------------------------------------------------------------
    SettingSpec("RDPR_RDP_PORT", "rdp_port", "3389", "Port the RDP probe connects to.", _positive_int),
    SettingSpec(
        "RDPR_PROBE_TIMEOUT_SECONDS",
        "probe_timeout_seconds",
        "5",
        "Overall deadline of one RDP probe.",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_EXPIRY_WARNING_DAYS",
        "expiry_warning_days",
        "14",
        "A certificate with fewer days left is `expiring-soon` (proactive renewal).",
        _positive_int,
    ),
    # --- Sweep -------------------------------------------------------------------------------------------
    SettingSpec(
        "RDPR_SWEEP_SCHEDULE",
        "sweep_schedule",
        "0 0 */6 * * *",
        "NCRONTAB schedule of the sweep (six fields, seconds first).",
        str,
    ),
    SettingSpec(
        "RDPR_SWEEP_MODE",
        "sweep_mode",
        "report",
        "`report`: record findings only; `remediate`: enqueue remediations.",
        _choice("report", "remediate"),
    ),
    SettingSpec(
        "RDPR_SWEEP_PROBE",
        "sweep_probe",
        "true",
        "Probe every running Windows VM during the sweep (needs a network path to port 3389).",
        _bool,
    ),
    SettingSpec(
        "RDPR_SWEEP_MAX_VMS",
        "sweep_max_vms",
        "20",
        "Blast radius: most VMs the sweeps may enqueue within any `RDPR_SWEEP_WINDOW_HOURS` (a rolling window "
        "across sweeps, so a second sweep soon after the first gets only what is left).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_SWEEP_MAX_PERCENT",
        "sweep_max_percent",
        "10",
        "Blast radius: the same limit as a percentage of the Windows fleet in scope (the smaller one applies).",
        _percent,
    ),
    SettingSpec(
        "RDPR_SWEEP_WINDOW_HOURS",
        "sweep_window_hours",
        "6",
        "The rolling window of the sweep's blast radius, in hours (the default equals the default schedule).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_AUDIT_RETENTION_DAYS",
        "audit_retention_days",
        "90",
        "Audit records (requests and their steps) older than this are deleted, a bounded batch after each "
        "sweep. Alert dedup keys are kept for the 30-day life of an Azure Monitor alert. Must cover "
        "`RDPR_SWEEP_WINDOW_HOURS`, `RDPR_CIRCUIT_WINDOW_HOURS` and `RDPR_ATTEMPT_WINDOW_HOURS`.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_CIRCUIT_FAILURE_RATIO",
        "circuit_failure_ratio",
        "0.5",
        "Stop enqueuing when this share of the recently remediated VMs failed (each VM counted once, by its latest "
        "outcome; failures that changed nothing do not count).",
        _ratio,
    ),
    SettingSpec(
        "RDPR_CIRCUIT_MIN_OUTCOMES",
        "circuit_min_outcomes",
        "5",
        "Recently remediated VMs needed before the circuit breaker may open.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_CIRCUIT_WINDOW_HOURS",
        "circuit_window_hours",
        "6",
        "How far back the circuit breaker looks.",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_LOG_WORKSPACE_ID",
        "log_workspace_id",
        "",
        "Log Analytics workspace (customer id GUID) queried for events 1057/1058/36870/36871. Empty: no log evidence.",
        str,
    ),
    SettingSpec(
        "RDPR_EVIDENCE_HOURS",
        "evidence_hours",
        "24",
        "How far back the log evidence query looks.",
        _positive_int,
    ),
    # --- Storage -----------------------------------------------------------------------------------------
    SettingSpec(
        "RDPR_STORAGE_CONNECTION",
        "storage_connection",
        "",
        "Storage connection string for the ledger and queue. Empty: use the account of "
        "`AzureWebJobsStorage__accountName` with the managed identity.",
        str,
    ),
    SettingSpec(
        "AzureWebJobsStorage__accountName",
        "storage_account",
        "",
        "Storage account of the host and the ledger (identity-based access).",
        str,
    ),
    SettingSpec(
        "RDPR_QUEUE_NAME",
        "queue_name",
        "remediation-requests",
        "Queue of per-VM remediation requests (its poison queue is `<name>-poison`).",
        str,
    ),
    SettingSpec(
        "RDPR_MAX_DEQUEUE_COUNT",
        "max_dequeue_count",
        "5",
        "Deliveries of a queue message before it goes to the poison queue; must equal host.json "
        "`extensions.queues.maxDequeueCount` (the last delivery records the failure first).",
        _positive_int,
    ),
    SettingSpec(
        "RDPR_TABLE_PREFIX",
        "table_prefix",
        "rdpr",
        "Prefix of the ledger's tables (letters and digits).",
        str,
    ),
    # --- Azure endpoints and identity --------------------------------------------------------------------
    SettingSpec(
        "RDPR_ARM_URL",
        "arm_url",
        "https://management.azure.com",
        "Azure Resource Manager endpoint.",
        _https_url,
    ),
    SettingSpec(
        "RDPR_LOGS_URL",
        "logs_url",
        "https://api.loganalytics.io/v1",
        "Log Analytics query endpoint.",
        _https_url,
    ),
    SettingSpec(
        "AZURE_CLIENT_ID",
        "managed_identity_client_id",
        "",
        "Client id of the user-assigned managed identity (read by azure-identity as well).",
        str,
    ),
    SettingSpec(
        "RDPR_EMULATOR",
        "emulator",
        "false",
        "Talk to the local emulator: static token, the emulator's CA. Refused unless both URLs are loopback addresses.",
        _bool,
    ),
    SettingSpec(
        "RDPR_EMULATOR_CA_CERT",
        "emulator_ca_cert",
        "",
        "PEM file of the emulator's certificate (emulator mode only).",
        str,
    ),
    SettingSpec(
        "RDPR_POLL_INTERVAL_SECONDS",
        "poll_interval_seconds",
        "2",
        "Seconds between polls of a young long-running operation, of a rebooting VM and of its RDP listener "
        "(Azure's Compute answers carry no `Retry-After`).",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_POLL_FAST_SECONDS",
        "poll_fast_seconds",
        "60",
        "How long an operation or a reboot is polled at `RDPR_POLL_INTERVAL_SECONDS` before the polls back off.",
        _non_negative_float,
    ),
    SettingSpec(
        "RDPR_POLL_MAX_INTERVAL_SECONDS",
        "poll_max_interval_seconds",
        "10",
        "Longest wait between polls once they back off (each wait grows by a quarter of the time past the fast "
        "window).",
        _non_negative_float,
    ),
)


@dataclass(frozen=True)
class Settings:
    """Typed view of `SPECS`; build it with `Settings.from_env()` (`from_env({})` gives the defaults)."""

    scopes: tuple[str, ...]
    opt_out_tag: tuple[str, str] | None
    opt_in_tag: tuple[str, str] | None
    require_opt_in: bool
    dry_run: bool
    cooldown_minutes: int
    max_attempts: int
    attempt_window_hours: int
    max_concurrent: int
    max_active: int
    max_active_per_subscription: int
    slot_retry_seconds: int
    storm_max_per_hour: int
    storm_max_percent: float
    approval_triggers: tuple[str, ...]
    approval_expiry_minutes: int
    approver_role: str
    operator_role: str
    reboot_window: str
    window_margin_seconds: float
    window_tag: str
    reboot_policy: str
    lock_minutes: int
    lease_seconds: int
    workflow_deadline_minutes: int
    boot_timeout_seconds: float
    retry_after_cap_seconds: float
    retry_total: int
    retry_backoff_seconds: float
    restart_evidence_seconds: float
    rdp_port: int
    probe_timeout_seconds: float
    expiry_warning_days: int
    sweep_schedule: str
    sweep_mode: str
    sweep_probe: bool
    sweep_max_vms: int
    sweep_max_percent: float
    sweep_window_hours: int
    audit_retention_days: int
    circuit_failure_ratio: float
    circuit_min_outcomes: int
    circuit_window_hours: int
    log_workspace_id: str
    evidence_hours: int
    storage_connection: str
    storage_account: str
    queue_name: str
    max_dequeue_count: int
    table_prefix: str
    arm_url: str
    logs_url: str
    managed_identity_client_id: str
    emulator: bool
    emulator_ca_cert: str
    poll_interval_seconds: float
    poll_fast_seconds: float
    poll_max_interval_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse every setting; a bad value raises ConfigurationError naming the variable."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for spec in SPECS:
            text = source.get(spec.env, spec.default)
            try:
                values[spec.attr] = spec.parse(text)
            except ValueError as exc:
                raise ConfigurationError(f"{spec.env}: {exc}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-setting rules that one value alone cannot express."""
        if self.lock_minutes <= self.workflow_deadline_minutes:
            raise ConfigurationError(
                "RDPR_LOCK_MINUTES must exceed RDPR_WORKFLOW_DEADLINE_MINUTES: a lock that expires while its "
                "workflow still runs lets a second worker in"
            )
        if not self.table_prefix.isalnum():
            raise ConfigurationError("RDPR_TABLE_PREFIX: letters and digits only")
        self._check_retention()
        if self.reboot_window and changewindow.parse(self.reboot_window).nominal_seconds < self.window_margin_seconds:
            raise ConfigurationError(
                f"RDPR_REBOOT_WINDOW={self.reboot_window!r} is shorter than RDPR_WINDOW_MARGIN_SECONDS="
                f"{self.window_margin_seconds:g}: no reboot could ever start in it"
            )
        if self.emulator:
            for name, url in (("RDPR_ARM_URL", self.arm_url), ("RDPR_LOGS_URL", self.logs_url)):
                host = urlparse(url).hostname or ""
                if not is_loopback_host(host):
                    raise ConfigurationError(
                        f"RDPR_EMULATOR is true but {name} points at {host!r}: the emulator's static token "
                        "is only ever sent to a loopback address"
                    )
        elif self.emulator_ca_cert:
            raise ConfigurationError("RDPR_EMULATOR_CA_CERT is set but RDPR_EMULATOR is false")

    def _check_retention(self) -> None:
        """Pruning must never delete audit records a window still counts: the rolling sweep limit, the
        circuit breaker and the attempt limit would silently forget what they are there to remember."""
        windows = {
            "RDPR_SWEEP_WINDOW_HOURS": self.sweep_window_hours,
            "RDPR_CIRCUIT_WINDOW_HOURS": self.circuit_window_hours,
            "RDPR_ATTEMPT_WINDOW_HOURS": self.attempt_window_hours,
        }
        for name, hours in windows.items():
            if self.audit_retention_days * 24 < hours:
                raise ConfigurationError(
                    f"RDPR_AUDIT_RETENTION_DAYS={self.audit_retention_days} keeps less than {name}={hours} h: "
                    "pruning would delete records that window still counts"
                )

    @property
    def workflow_deadline_seconds(self) -> float:
        return self.workflow_deadline_minutes * 60.0


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and literal loopback addresses only (a name like `127.0.0.1.example.com` is not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()


def markdown_table() -> str:
    """The README's configuration table, generated so that it can never drift from `SPECS`."""
    lines = ["| Setting | Default | Meaning |", "|---|---|---|"]
    for spec in SPECS:
        default = f"`{spec.default}`" if spec.default else "(empty)"
        lines.append(f"| `{spec.env}` | {default} | {spec.meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())  # noqa: T201 - `python -m remediate.settings` prints the README table
