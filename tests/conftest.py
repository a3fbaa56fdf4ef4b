"""Shared fixtures live in tests/fixtures/ (one module per service) and are registered here."""

pytest_plugins = ["tests.fixtures.emulator", "tests.fixtures.azurite", "tests.fixtures.product"]
