"""Devices, CPU threads and single-node data parallelism for the training loop.

A stage given several GPUs spawns one process per GPU (torch.multiprocessing, NCCL; gloo on
CPU, which the tests use) and runs the same loop in each; rank 0 alone checkpoints and
writes the heartbeat. Errors raised in any rank surface in the launching process as the
original exception. A stage started by torchrun instead joins torchrun's process group
(`torchrun_rank`), one rank per process torchrun started, even a single one. Nothing here
knows about experts or routers.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

from atoll.log import get_logger

log = get_logger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Rank:
    """This process's place in a data-parallel group (world 1: no group)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: bool = False
    """In a torch.distributed process group (torchrun starts one even for a single process)."""

    @property
    def main(self) -> bool:
        """Whether this process checkpoints, writes the heartbeat and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the model is wrapped in DistributedDataParallel and collectives run."""
        return self.world > 1 or self.group


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (pods)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_threads(world: int = 1) -> int:
    """Size torch's intra-op thread pool to this process's share of the cores; returns it.

    ATOLL_TORCH_THREADS (set by the local runtime when it runs stages side by side) overrides
    the cores this stage may use.
    """
    budget = available_cores()
    with contextlib.suppress(ValueError):
        budget = max(1, int(os.environ.get("ATOLL_TORCH_THREADS", "")))
    threads = max(1, budget // max(1, world))
    torch.set_num_threads(threads)
    return threads


def default_device(local_rank: int = 0) -> torch.device:
    """cuda:<local_rank> where a GPU exists, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def single_process() -> Rank:
    """The Rank of an ordinary one-process run, with threads sized to the machine."""
    configure_threads(1)
    return Rank(device=default_device(0))


def launch(entry: Callable[..., _T], args: tuple[Any, ...], world: int) -> _T:
    """Run `entry(rank, *args)` in `world` spawned processes and return rank 0's result.

    `entry` and `args` must be picklable (module-level function, plain data). If any rank
    fails, the others are stopped and its exception is raised here.
    """
    if world < 2:
        return entry(single_process(), *args)
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = _free_port()
    log.info("starting data-parallel training", processes=world, backend=_backend(), port=port)
    failure: BaseException | None = None
    try:
        start_processes(  # type: ignore[no-untyped-call]
            _worker, args=(entry, args, world, port, results), nprocs=world, start_method="spawn"
        )
    except (ProcessRaisedException, ProcessExitedException) as error:
        failure = error
    outcome: dict[int, tuple[str, Any]] = {}
    while not results.empty():
        rank, status, value = results.get()
        outcome[rank] = (status, value)
    errors = [value for status, value in outcome.values() if status == "error"]
    if errors:
        raise errors[0] from failure
    if failure is not None or 0 not in outcome:
        raise RuntimeError(f"a data-parallel training process died: {failure}")
    result: _T = outcome[0][1]
    return result


def _worker(  # noqa: PLR0917 - torch.multiprocessing passes these positionally
    local_rank: int, entry: Callable[..., Any], args: tuple[Any, ...], world: int, port: int, results: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
    )
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    configure_threads(world)
    dist.init_process_group(_backend(), rank=local_rank, world_size=world)
    try:
        value = entry(Rank(rank=local_rank, world=world, device=device, group=True), *args)
        results.put((local_rank, "ok", value if local_rank == 0 else None))
    except BaseException as error:
        try:
            results.put((local_rank, "error", error))
        except Exception:  # an unpicklable exception: send its text
            results.put((local_rank, "error", RuntimeError(f"{type(error).__name__}: {error}")))
        raise
    finally:
        dist.destroy_process_group()


def torchrun_rank() -> Rank | None:
    """This process's Rank when torchrun started it (from torchrun's environment), else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    device = default_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Rank(rank=int(os.environ["RANK"]), world=world, device=device, group=True)


def join_group(rank: Rank) -> None:
    """Join torchrun's process group as `rank` (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from torchrun)."""
    if rank.device.type == "cuda":
        torch.cuda.set_device(rank.device)
    configure_threads(int(os.environ.get("LOCAL_WORLD_SIZE", str(rank.world))))
    if not dist.is_initialized():
        dist.init_process_group(_backend())


def leave_group() -> None:
    """Leave the process group `join_group` joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def broadcast(value: _T, rank: Rank) -> _T:
    """Rank 0's `value` on every rank (picklable objects)."""
    if not rank.distributed:
        return value
    box: list[Any] = [value if rank.main else None]
    dist.broadcast_object_list(box, src=0)
    result: _T = box[0]
    return result


def barrier(rank: Rank) -> None:
    if rank.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, rank: Rank) -> torch.Tensor:
    """Sum a tensor over ranks (in place), returning it."""
    if rank.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
