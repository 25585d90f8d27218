"""How one optimizer step's global batch is split: micro-batch × accumulation × GPUs.

The global batch is part of the recipe and never changes; the split is a property of the
hardware (the placement plan picks it per GPU) and may differ between attempts of the
same stage. Pure arithmetic: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from atoll.errors import AtollError


class BatchPlanError(AtollError):
    """micro-batch × accumulation × GPUs cannot make the global batch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchPlan:
    """The split of one optimizer step over devices and forward passes."""

    global_batch: int
    micro_batch: int
    """Examples per forward pass on one device."""
    grad_accum: int
    """Forward/backward passes per device per optimizer step."""
    world: int
    """Data-parallel processes (GPUs, or CPU processes)."""
    automatic: bool = False
    """The micro-batch was not given: the loop may shrink it when a device runs out of memory."""

    @property
    def per_rank(self) -> int:
        """Examples each process sees per optimizer step."""
        return self.micro_batch * self.grad_accum

    def rank_slice(self, rank: int) -> slice:
        """Positions [start, stop) of rank's examples in the step's global batch."""
        return slice(rank * self.per_rank, (rank + 1) * self.per_rank)

    def micro_slices(self, rank: int) -> list[slice]:
        """Positions in the global batch of each of rank's micro-batches, in order."""
        start = rank * self.per_rank
        return [slice(start + j * self.micro_batch, start + (j + 1) * self.micro_batch) for j in range(self.grad_accum)]

    def smaller(self) -> BatchPlan | None:
        """The next smaller micro-batch that still divides the per-rank batch (for OOM fallback)."""
        per_rank = self.per_rank
        for micro in range(self.micro_batch - 1, 0, -1):
            if per_rank % micro == 0:
                return BatchPlan(
                    global_batch=self.global_batch,
                    micro_batch=micro,
                    grad_accum=per_rank // micro,
                    world=self.world,
                    automatic=self.automatic,
                )
        return None


def plan_batch(
    global_batch: int,
    *,
    world: int = 1,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    field: str = "expert",
) -> BatchPlan:
    """Resolve the split; every given number must be consistent with the global batch.

    Neither given: the whole per-rank share in one pass (automatic: shrunk on OOM).
    `field` names the spec section (expert / router) in error messages.
    """
    if global_batch < 1:
        raise BatchPlanError(f"{field}.globalBatchSize must be at least 1, got {global_batch}")
    if world < 1:
        raise BatchPlanError(f"--gpus must be at least 1, got {world}")
    if global_batch % world:
        raise BatchPlanError(f"{field}.globalBatchSize ({global_batch}) is not divisible by the {world} GPUs")
    per_rank = global_batch // world
    for name, value in (("micro-batch", micro_batch), ("grad-accum", grad_accum)):
        if value is not None and value < 1:
            raise BatchPlanError(f"{name} must be at least 1, got {value}")
    if micro_batch is None and grad_accum is None:
        return BatchPlan(global_batch=global_batch, micro_batch=per_rank, grad_accum=1, world=world, automatic=True)
    if micro_batch is None:
        assert grad_accum is not None
        if per_rank % grad_accum:
            raise BatchPlanError(
                f"{field}.globalBatchSize ({global_batch}) / {world} GPUs = {per_rank} is not divisible by"
                f" grad-accum {grad_accum}"
            )
        micro_batch = per_rank // grad_accum
    elif grad_accum is None:
        if per_rank % micro_batch:
            raise BatchPlanError(
                f"micro-batch {micro_batch} does not divide {field}.globalBatchSize ({global_batch}) / {world} GPUs"
                f" = {per_rank}"
            )
        grad_accum = per_rank // micro_batch
    if micro_batch * grad_accum * world != global_batch:
        raise BatchPlanError(
            f"micro-batch {micro_batch} × grad-accum {grad_accum} × {world} GPUs = {micro_batch * grad_accum * world},"
            f" but {field}.globalBatchSize is {global_batch}"
        )
    return BatchPlan(global_batch=global_batch, micro_batch=micro_batch, grad_accum=grad_accum, world=world)
