"""Turning triggers (alerts, runbook calls, sweeps) into per-VM remediation requests."""
