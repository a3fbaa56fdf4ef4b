"""Intake: alert and runbook bodies to remediation requests."""
