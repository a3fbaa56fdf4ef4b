"""`rdp-remediate` command line: one module per subcommand, each with `add_arguments` and `run`.

Subcommand modules must stay cheap to import (no Azure SDK at module level) so that `--help` and
usage errors answer at once. Errors end as one line on stderr that says what to do, with the exit code below;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata
from typing import Protocol

from remediate.cli.errors import explain

# name -> (module, one-line help). Keep in step with the README.
COMMANDS: dict[str, tuple[str, str]] = {
    "probe": ("remediate.cli.probe", "check RDP at the protocol level (X.224 + TLS + certificate)"),
    "alert": ("remediate.cli.alert", "what the alert endpoint would do with an alert payload (no enqueuing)"),
    "run": ("remediate.cli.run", "remediate one VM now: diagnose, repair, reboot, verify (or --resume a request)"),
    "status": ("remediate.cli.status", "one request's state, steps and outcome"),
    "history": ("remediate.cli.history", "the recent remediations of one VM"),
    "unlock": ("remediate.cli.unlock", "release a VM's lock left by a stopped run (refused while it restarts)"),
    "approve": ("remediate.cli.decide", "approve a diagnosed request waiting for approval (recorded with who and why)"),
    "reject": ("remediate.cli.decide", "reject a diagnosed request waiting for approval: it ends unchanged"),
    "release": ("remediate.cli.release", "run a request the storm guard holds, now (counted, never refused)"),
    "sweep": ("remediate.cli.sweep", "run the sweep once: find broken or expiring RDP certificates in scope"),
    "fleet": ("remediate.cli.fleet", "the fleet's RDP certificates as the last sweeps saw them, and the forecast"),
    "report": ("remediate.cli.report", "one self-contained HTML report: forecast, outcomes, per-request evidence"),
    "demo": ("remediate.cli.demo", "the whole product on the local Azure emulator (no Azure needed)"),
}

# Exit codes, the same for every command (README "Exit codes").
EXIT_OK = 0  # done: healthy, remediated, a dry run planned, a diagnose-only run finished, a listing printed
EXIT_PROBLEM = 1  # done, and the answer is bad: not fixed, RDP broken, the alert cannot be acted on
EXIT_USAGE = 2  # bad arguments or settings: nothing was done
EXIT_PENDING = 3  # the request is not finished: queued, running, or interrupted (resume it)
EXIT_UNAVAILABLE = 4  # Azure or storage could not be reached or signed in to: nothing was done
EXIT_REFUSED = 5  # refused for safety (e.g. unlock while a restart is in flight): nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (128 + SIGPIPE)

EPILOG = """exit codes: 0 ok, 1 problem found or not fixed, 2 usage or settings, 3 not finished yet,
4 Azure or storage unreachable or not signed in, 5 refused for safety, 130 interrupted, 141 broken pipe.
Every command reads its settings from RDPR_* environment variables (README "Configuration");
`rdp-remediate COMMAND --help` lists the ones that command reads, with examples."""


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def version() -> str:
    try:
        return metadata.version("rdp-remediate")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = _Parser(
        prog="rdp-remediate",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rdp-remediate {version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands: dict[str, Command] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module: Command = importlib.import_module(module_name)
        epilog = getattr(module, "EPILOG", None)
        module.add_arguments(
            subparsers.add_parser(
                name,
                help=help_text,
                description=help_text,
                epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
        commands[name] = module
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug)
    try:
        _configure_telemetry()
        return commands[args.command].run(args)
    except KeyboardInterrupt:
        print("rdp-remediate: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output stopped reading (`| head`): say so once, without a traceback.
        _silence_stdout()
        print("rdp-remediate: output closed early (broken pipe); redirect to a file to keep it all", file=sys.stderr)
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        code, line = explain(exc)
        print(f"rdp-remediate: {line}", file=sys.stderr)
        return code
    finally:
        _flush_telemetry()


def _configure_logging(debug: bool) -> None:
    """Library warnings (azure-identity lists every credential it tried) would bury the one line that says what
    to do: without --debug they are not printed; the command reports the outcome itself."""
    root = logging.getLogger()
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    elif not root.handlers:
        root.addHandler(logging.NullHandler())


def _configure_telemetry() -> None:
    """With APPLICATIONINSIGHTS_CONNECTION_STRING set, the CLI's runs are traced like the Function's."""
    from remediate import telemetry

    telemetry.configure()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _flush_telemetry() -> None:
    from remediate import telemetry

    with contextlib.suppress(Exception):  # telemetry must never change a command's answer
        telemetry.flush()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
