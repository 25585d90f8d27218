"""The quickstart through the operator vs `make demo` (the same run, local), in one session.

    .venv/bin/python bench/operator_quickstart.py [--manifest manifests/examples/quickstart.yaml]

1. `make demo`'s command — `atoll run MANIFEST --local` — in a fresh work directory, timed
   from start to exit (the baseline: the same stages as processes on this machine).
2. The dev environment of tests/env (`make dev-up`: control plane, kwok GPU fleet, MinIO, the
   pod process runtime, the operator), then the same manifest applied with `atoll run FILE`,
   timed from apply to the DDMRun's phase Succeeded; the environment is stopped after.

Both runs train on this machine's CPU: the pod runtime runs every stage pod as a host
process with the environment its pod asks for (CPU request → OMP/torch threads). Prints both
times, the ratio and the load average before each, and writes them as JSON with --json.
Run it on a quiet machine: the two runs are minutes each and share the cores with nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.env import devenv  # noqa: E402 - after the path set-up above


def _atoll() -> str:
    return str(Path(sys.executable).parent / "atoll")


def local_run(manifest: Path) -> float:
    """Seconds of `atoll run MANIFEST --local` (what `make demo` runs) in a fresh work directory."""
    with tempfile.TemporaryDirectory(prefix="atoll-demo-") as work:
        started = time.monotonic()
        subprocess.run([_atoll(), "run", str(manifest), "--local", "--workdir", work], check=True, cwd=ROOT)
        return time.monotonic() - started


def _phase(env: dict[str, str], name: str) -> dict[str, Any]:
    done = subprocess.run(
        ["kubectl", "get", "ddmrun", name, "-n", "default", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        return {}
    status: dict[str, Any] = json.loads(done.stdout).get("status") or {}
    return status


def operator_run(manifest: Path, name: str, timeout: float) -> float:
    """Seconds from `atoll run MANIFEST` (apply) to the DDMRun Succeeded, on the dev environment."""
    if devenv.up() != 0:
        raise SystemExit("make dev-up failed")
    try:
        env = dict(os.environ)
        for line in (devenv.DEV / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.replace("$PATH", os.environ.get("PATH", "")).strip("'")
        started = time.monotonic()
        subprocess.run([_atoll(), "run", str(manifest)], check=True, env=env, cwd=ROOT)
        while time.monotonic() - started < timeout:
            status = _phase(env, name)
            if status.get("phase") == "Succeeded":
                return time.monotonic() - started
            if status.get("phase") == "Failed":
                raise SystemExit(f"the run failed: {status.get('message')}")
            time.sleep(2)
        raise SystemExit(f"the run did not succeed within {timeout:.0f} s: {_phase(env, name)}")
    finally:
        devenv.down(quiet=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "examples" / "quickstart.yaml")
    parser.add_argument("--name", default="digits-quickstart", help="the DDMRun's metadata.name in the manifest")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_local = os.getloadavg()[0]
    local = local_run(args.manifest)
    load_operator = os.getloadavg()[0]
    operated = operator_run(args.manifest, args.name, args.timeout)
    result = {
        "make_demo_seconds": round(local, 1),
        "operator_seconds": round(operated, 1),
        "operator_over_make_demo": round(operated / local, 2),
        "load_average_before": [round(load_local, 2), round(load_operator, 2)],
        "cpus": os.cpu_count(),
    }
    print(
        f"make demo (atoll run --local): {local:.0f} s (load {load_local:.1f}); through the operator:"
        f" {operated:.0f} s (load {load_operator:.1f}); operator ÷ make demo = {operated / local:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
