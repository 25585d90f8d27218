"""The stage command's exit status for a store that stays unreachable: 5 (the operator retries
it without using up failurePolicy.maxRestarts while the outage is short), never 1 or 4."""

from __future__ import annotations

import os
import subprocess
import sys

from atoll.errors import BadInputError
from atoll.stages import ExitCode
from atoll.store import StoreError, StoreUnavailableError
from atoll.trainer.__main__ import exit_code
from tests.env.process import free_port


def test_an_outage_is_exit_5_even_when_it_surfaces_wrapped() -> None:
    wrapped = StoreError("uploading the checkpoint failed")
    wrapped.__cause__ = StoreUnavailableError("s3://atoll unreachable for 120 s")
    assert exit_code(wrapped) == ExitCode.STORE_UNAVAILABLE
    assert exit_code(StoreError("access denied")) == ExitCode.FAILED
    assert exit_code(BadInputError("no such dataset")) == ExitCode.BAD_INPUT


def test_a_stage_whose_store_stays_unreachable_exits_5() -> None:
    env = {
        **os.environ,
        "MINIO_ENDPOINT": f"127.0.0.1:{free_port()}",  # nothing listens there
        "MINIO_ACCESS_KEY": "atoll",
        "MINIO_SECRET_KEY": "atoll-secret",
        "ATOLL_STORE_RETRY_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    root = "s3://atoll/runs/ns/r"
    argv = [sys.executable, "-m", "atoll.trainer", "partition", "--run", f"{root}/spec.json", "--store", root]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == ExitCode.STORE_UNAVAILABLE, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error:")
