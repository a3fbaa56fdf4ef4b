"""What telemetry costs at cold start: `import function_app`, and the first invocation's one-off set-up.

Fresh interpreters, medians of --runs, minus the bare interpreter's start-up:

* `import function_app` with telemetry configured by the environment (it must not import OpenTelemetry);
* `remediate.telemetry.configure()` with a connection string: what the first invocation pays when this process
  sets up Azure Monitor itself (in Azure the Functions worker does it before loading the app, outside our
  import, when `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`).

    .venv/bin/python bench/telemetry.py [--runs 5]

Budget: cold `import function_app` <= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONNECTION = "InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint=https://127.0.0.1:9/"


def timed(code: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    return time.monotonic() - started


def median(code: str, env: dict[str, str], runs: int) -> float:
    return statistics.median(timed(code, env) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS", "PYTHON_APPLICATION"))}
    quiet = {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true"}
    with_telemetry = {**base, **quiet, "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION}
    bare = median("pass", base, args.runs)
    cases = [
        ("import function_app (no telemetry)", "import function_app", base),
        ("import function_app (connection string set)", "import function_app", with_telemetry),
        (
            "import + first-invocation configure()",
            "import function_app; from remediate import telemetry; telemetry.configure()",
            with_telemetry,
        ),
    ]
    print(f"{'case':<48} {'median s':>9}")
    for name, code, env in cases:
        print(f"{name:<48} {median(code, env, args.runs) - bare:>9.3f}")
    print(f"(bare interpreter start-up {bare:.3f} s subtracted; median of {args.runs})")


if __name__ == "__main__":
    main()
