"""Every store write to a local file goes through one temp-file-and-rename: a write that fails
half-way leaves the old file and no temp file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.store import open_store
from atoll.store.base import replacing


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    with replacing(target) as handle:
        handle.write(b"old")

    def die_half_way() -> None:
        with replacing(target) as handle:
            handle.write(b"new, half")
            raise RuntimeError("the process died here")

    with pytest.raises(RuntimeError):
        die_half_way()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.bin"]


def test_local_store_files_in_and_out_whole(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 40_000)  # over one chunk
    store.put_file("run/expert-0/step-10/weights.bin", source)
    out = tmp_path / "out" / "weights.bin"
    store.get_file("run/expert-0/step-10/weights.bin", out)
    assert out.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["weights.bin"]
