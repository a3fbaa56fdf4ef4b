"""`rdp-remediate` command line: one module per subcommand, each with `add_arguments` and `run`.

Subcommand modules must stay cheap to import (no Azure SDK at module level) so that `--help` and
usage errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from remediate.model import ConfigurationError, RemediationError

# name -> (module, one-line help). Keep in step with the README.
COMMANDS: dict[str, tuple[str, str]] = {
    "probe": ("remediate.cli.probe", "check RDP at the protocol level (X.224 + TLS + certificate)"),
    "alert": ("remediate.cli.alert", "what the alert endpoint would do with an alert payload (no enqueuing)"),
    "run": ("remediate.cli.run", "remediate one VM now: diagnose, repair, reboot, verify"),
    "history": ("remediate.cli.history", "the recent remediations of one VM"),
    "status": ("remediate.cli.status", "one request's state, steps and outcome"),
    "sweep": ("remediate.cli.sweep", "run the sweep once: find broken or expiring RDP certificates in scope"),
    "demo": ("remediate.cli.demo", "the whole product on the local Azure emulator (no Azure needed)"),
}

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = _Parser(prog="rdp-remediate", description=__doc__.splitlines()[0] if __doc__ else None)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands: dict[str, Command] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module: Command = importlib.import_module(module_name)
        module.add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
        commands[name] = module
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        return commands[args.command].run(args)
    except ConfigurationError as exc:
        print(f"rdp-remediate: configuration error: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except RemediationError as exc:
        print(f"rdp-remediate: {exc.reason}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        print("rdp-remediate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
