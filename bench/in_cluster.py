"""The operator in cluster: image sizes, time from `helm install` to the first reconcile, peak memory.

    .venv/bin/python bench/in_cluster.py [--json OUT.json]

It builds (or reuses, keyed by its inputs) the operator image with `images.build`, reads the
trainer image's size when `make images` has put it into local storage (it never builds the
trainer: 25 min here), then runs the in-cluster e2e test
(tests/operator/test_e2e_in_cluster.py) with ATOLL_BENCH_OUT set: `helm install` of
charts/atoll with that image into the real control plane, a small DDMRun applied just before
the install, and the test's measurements: seconds from `helm install` to the operator's first
status on that run, the operator process's peak RSS (VmHWM; the pod runtime runs the image's
process on the host, so /proc shows it) when the run has Succeeded, and the wall time of the
whole run. Absolute figures, not a speed claim: there is no baseline to divide by.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from images.build import IMAGES, build, version  # noqa: E402 - after the repository is on the path
from images.engine import find_engine  # noqa: E402

E2E = "tests/operator/test_e2e_in_cluster.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    engine = find_engine(install=True)
    operator = build(IMAGES["operator"], engine=engine)
    trainer_ref = f"localhost/{IMAGES['trainer'].name}:{version()}"
    trainer_size = engine.image_size(trainer_ref) if engine.image_id(trainer_ref) else None
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start",
        "python": platform.python_version(),
        "operator_image": operator.ref,
        "operator_image_mb": round(operator.size / 1e6),
        "operator_image_build_s": round(operator.seconds, 1),
        "operator_image_cached": operator.cached,
        "trainer_image_mb": round(trainer_size / 1e6) if trainer_size else None,
    }

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "in_cluster.json"
        started = time.monotonic()
        command = [sys.executable, "-m", "pytest", E2E, "-x", "-q", "-p", "no:cacheprovider"]
        test = subprocess.run(command, cwd=REPO, env={**os.environ, "ATOLL_BENCH_OUT": str(out)}, check=False)
        results["e2e_test_s"] = round(time.monotonic() - started, 1)
        if test.returncode != 0 or not out.exists():
            print(f"the in-cluster e2e failed ({test.returncode}): no measurement", file=sys.stderr)
            return 1
        results.update(json.loads(out.read_text()))

    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
