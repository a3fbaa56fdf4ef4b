"""Local Azure emulator for tests, the demo and benchmarks. Never imported by `remediate`."""
