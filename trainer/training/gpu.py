"""What the training loop does differently on a GPU so that the host never waits for it.

Three things, each a no-op on the CPU (where results must not change): host-to-device
copies staged in pinned memory and issued non-blocking (a copy from pageable memory makes
the host wait until every kernel already queued has finished), each step's loss read back
through a pinned buffer and a CUDA event instead of `.item()` (so the host prepares the next
step while the GPU runs this one), and regional `torch.compile` of a model's repeated
transformer blocks. Never changes what is computed, only when the host learns of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from atoll.log import get_logger

log = get_logger(__name__)

RUN_AHEAD_STEPS = 2
"""Optimizer steps the host may queue before it waits for the oldest loss: enough to keep
the GPU busy while the host prepares the next step, few enough that heartbeats, on_step
hooks and the NaN check lag the GPU by at most this many steps."""


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without making the host wait for queued GPU work.

    CPU → CUDA copies go through pinned memory, non-blocking; torch's caching host allocator
    keeps the pinned source alive until the copy has run. Anything else is `tensor.to(device)`.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    source = tensor if tensor.is_pinned() else tensor.pin_memory()
    return source.to(device, non_blocking=True)


@dataclass
class _Pending:
    step: int
    value: torch.Tensor
    """A pinned host scalar the device copies the loss into (or the loss itself on the CPU)."""
    ready: torch.cuda.Event | None


class LossReadback:
    """The losses of queued optimizer steps, handed back in order once the GPU has computed them.

    `push(step, loss)` right after a step is queued; `settled()` yields (step, value) for
    every step whose loss has arrived, waiting only for steps more than `ahead` behind the
    newest (or for all of them up to `through`). On the CPU every push is settled at once.
    """

    def __init__(self, device: torch.device, *, ahead: int = RUN_AHEAD_STEPS) -> None:
        self.device = device
        self.ahead = ahead
        self._pending: deque[_Pending] = deque()

    @property
    def asynchronous(self) -> bool:
        return self.device.type == "cuda"

    def push(self, step: int, loss: torch.Tensor) -> None:
        """Start reading back the (0-d) loss of `step`."""
        if not self.asynchronous:
            self._pending.append(_Pending(step, loss.detach(), None))
            return
        host = torch.empty((), dtype=loss.dtype, pin_memory=True)
        host.copy_(loss.detach(), non_blocking=True)
        ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
        ready.record()
        self._pending.append(_Pending(step, host, ready))

    def settled(self, *, through: int | None = None) -> Iterator[tuple[int, float]]:
        """(step, loss) of each step that is ready, oldest first; waits for steps ≤ `through`
        and for those more than `ahead` steps behind the newest push."""
        while self._pending:
            oldest = self._pending[0]
            must = (through is not None and oldest.step <= through) or len(self._pending) > self.ahead
            if oldest.ready is not None and not must and not oldest.ready.query():  # type: ignore[no-untyped-call]
                return
            if oldest.ready is not None:
                oldest.ready.synchronize()
            self._pending.popleft()
            yield oldest.step, float(oldest.value.item())

    def __len__(self) -> int:
        return len(self._pending)


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules regional compilation compiles: those named by the model's `_repeated_blocks`
    (diffusers' convention), else the entries of its `transformer_blocks` list."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    blocks = getattr(model, "transformer_blocks", None)
    return list(blocks) if isinstance(blocks, torch.nn.ModuleList) else []


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> int:
    """Compile each repeated block of `model` in place (regional compilation); returns how many.

    Identical blocks share one compiled graph, so compiling costs about one block's worth
    instead of the whole model's, and in-place `Module.compile` keeps parameter names (and so
    checkpoints, the EMA and the optimizer) exactly as they were. Shapes are static: a new
    micro-batch (the out-of-memory fallback) recompiles instead of switching to dynamic kernels.
    """
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated transformer blocks to compile")
    for block in blocks:
        block.compile(backend=backend, dynamic=False)
    log.info("compiling transformer blocks", model=type(model).__name__, blocks=len(blocks), backend=backend)
    return len(blocks)
