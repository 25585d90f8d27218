"""A stage sizes torch's thread pool from the CPU it was given: the pod's CPU limit arrives as
OMP_NUM_THREADS and ATOLL_TORCH_THREADS (downward API), the local runtime's share as
ATOLL_TORCH_THREADS."""

from __future__ import annotations

import pytest
import torch

from atoll.trainer.training.distributed import configure_threads


@pytest.fixture(autouse=True)
def _keep_threads() -> object:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_pods_cpu_limit_sizes_the_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATOLL_TORCH_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads() == 3
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("ATOLL_TORCH_THREADS", "2")
    assert configure_threads() == 2
    assert torch.get_num_threads() == 2
    assert configure_threads(world=2) == 1
