"""The per-VM remediation workflow, its steps and the safety policy."""
