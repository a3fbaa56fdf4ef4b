"""Settings of `remediate/settings.py` that the Bicep deliberately leaves to their documented defaults.

Every setting in `SPECS` is either set in the Function App's app settings (`infra/modules/function.bicep`) or
listed here with the reason; `test_app_settings.py` fails when a new setting is in neither place. To change
one of these on a deployed app, set it as an app setting (docs/deploy.md shows how).
"""

from __future__ import annotations

_SAFETY = "safety policy: the documented default is the reviewed starting point; tune it after report-only runs"

LEFT_TO_DEFAULT: dict[str, str] = {
    "RDPR_COOLDOWN_MINUTES": _SAFETY,
    "RDPR_MAX_ATTEMPTS": _SAFETY,
    "RDPR_ATTEMPT_WINDOW_HOURS": _SAFETY,
    "RDPR_MAX_CONCURRENT": "the CLI's own threads; the Function's fleet-wide bound is RDPR_MAX_ACTIVE",
    "RDPR_MAX_ACTIVE": _SAFETY + " (the fleet-wide bound; docs/operations.md relates it to host.json and the plan)",
    "RDPR_MAX_ACTIVE_PER_SUBSCRIPTION": _SAFETY + " (off by default: the global bound alone)",
    "RDPR_SLOT_RETRY_SECONDS": "how soon a request that found no slot is tried again; no deployment-specific value",
    "RDPR_STORM_MAX_PER_HOUR": _SAFETY + " (storm guard)",
    "RDPR_STORM_MAX_PERCENT": _SAFETY + " (storm guard)",
    "RDPR_REBOOT_WINDOW": _SAFETY + " (reboot any time unless a VM's tag names its window)",
    "RDPR_WINDOW_MARGIN_SECONDS": _SAFETY + " (equal to the boot timeout: a restart ends inside its window)",
    "RDPR_WINDOW_TAG": "the documented tag name; change it only to match an existing tagging convention",
    "RDPR_APPROVAL_TRIGGERS": _SAFETY + " (approval off by default; turn it on per trigger)",
    "RDPR_APPROVAL_EXPIRY_MINUTES": _SAFETY + " (how long a plan may wait for a person)",
    "RDPR_APPROVER_ROLE": "the app role documented in docs/operations.md; change it to match an existing role",
    "RDPR_OPERATOR_ROLE": "the app role documented in docs/operations.md; change it to match an existing role",
    "RDPR_REBOOT_POLICY": _SAFETY,
    "RDPR_LOCK_MINUTES": _SAFETY + " (longer than the workflow deadline, shorter than the cooldown)",
    "RDPR_LEASE_SECONDS": "a minute of heartbeats lost before another delivery takes a request over; nothing "
    "deployment-specific",
    "RDPR_RESTART_EVIDENCE_SECONDS": _SAFETY + " (how long the Activity Log may lag behind a restart)",
    "RDPR_WORKFLOW_DEADLINE_MINUTES": "25 minutes stays below the Flex Consumption function timeout (30 min)",
    "RDPR_BOOT_TIMEOUT_SECONDS": _SAFETY,
    "RDPR_RETRY_AFTER_CAP_SECONDS": "bounds throttling sleeps inside the workflow deadline; nothing Azure-specific",
    "RDPR_RETRY_TOTAL": "azure-core's retry count, trimmed so a persistent failure ends within the workflow deadline",
    "RDPR_RETRY_BACKOFF_SECONDS": "azure-core's default backoff base; nothing deployment-specific",
    "RDPR_RDP_PORT": "VMs listen on 3389 unless an admin moved RDP; change per deployment when they did",
    "RDPR_PROBE_TIMEOUT_SECONDS": "protocol constant: a healthy listener answers well within 5 s",
    "RDPR_EXPIRY_WARNING_DAYS": "policy constant for proactive renewal",
    "RDPR_SWEEP_MAX_VMS": _SAFETY + " (blast radius of one sweep)",
    "RDPR_SWEEP_MAX_PERCENT": _SAFETY + " (blast radius of one sweep)",
    "RDPR_SWEEP_WINDOW_HOURS": _SAFETY + " (the blast radius's rolling window)",
    "RDPR_AUDIT_RETENTION_DAYS": "retention policy: 90 days is the documented default; set it per deployment",
    "RDPR_CIRCUIT_FAILURE_RATIO": _SAFETY + " (circuit breaker)",
    "RDPR_CIRCUIT_MIN_OUTCOMES": _SAFETY + " (circuit breaker)",
    "RDPR_CIRCUIT_WINDOW_HOURS": _SAFETY + " (circuit breaker)",
    "RDPR_EVIDENCE_HOURS": "how far back log evidence looks; the workspace keeps at least 30 days",
    "RDPR_MAX_DEQUEUE_COUNT": (
        "must equal host.json extensions.queues.maxDequeueCount, which ships with the code, not the infrastructure"
    ),
    "RDPR_STORAGE_CONNECTION": (
        "empty means the managed identity on AzureWebJobsStorage__accountName; a connection string would need "
        "the shared keys this deployment disables"
    ),
    "RDPR_LOGS_URL": (
        "the public cloud's Log Analytics endpoint; Bicep's environment() does not expose it, so a sovereign "
        "cloud sets it by hand (docs/deploy.md)"
    ),
}

# Never set by the infrastructure: they point the product at the local emulator with a static token.
NEVER_SET: dict[str, str] = {
    "RDPR_EMULATOR": "emulator mode: static token and the emulator's CA; for tests and demos only",
    "RDPR_EMULATOR_CA_CERT": "the emulator's certificate; meaningless outside emulator mode",
}
