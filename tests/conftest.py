"""Shared fixtures live in tests/fixtures/ (one module per service) and are registered here."""

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.azurite",
    "tests.fixtures.product",
    # Holds the Azure calls the suite made through the emulator against the RBAC role (see its docstring).
    "tests.infra.rbac_audit",
]
