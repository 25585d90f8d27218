"""The test environment's build cache: a build killed mid-way leaves nothing behind for long."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.env.build import _remove_abandoned_staging


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_of_a_dead_build_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    out = tmp_path / "kwok-v0.8.0-abc"
    abandoned = tmp_path / f"{out.name}.tmp-{_dead_pid()}"
    running = tmp_path / f"{out.name}.tmp-1"  # pid 1 is alive
    other_tool = tmp_path / f"etcd-v3.6.8-abc.tmp-{_dead_pid()}"
    for folder in (abandoned, running, other_tool):
        folder.mkdir()
        (folder / "binary").write_text("partial")

    _remove_abandoned_staging(out)

    assert not abandoned.exists()
    assert running.is_dir()
    assert other_tool.is_dir(), "only the tool being built is cleaned"
