"""bench/autoscale.py's baseline (b) is what an autoscaler and the default scheduler do: one-GPU
pods spread over the free GPUs, Pending ones given new GPUs from the cheapest pool with headroom
after its delay, the rest queued for the first GPU freed; and Atoll is never slower than the
static fleet."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from atoll.operator.placement import speed_table
from atoll.operator.placement.problem import START_SECONDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autoscale_bench", ROOT / "bench" / "autoscale.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def seconds(bench: ModuleType, case: object, product: tuple[str, int, int], *, pool: bool = False) -> float:
    """One expert of 1000 steps × 256 on one GPU (a pool's GPU has no compute capability label)."""
    per_gpu = speed_table(bench.spec_of(case)).per_gpu(product[0], None if pool else product[2])
    return 1000 * 256 / per_gpu + START_SECONDS


def test_pods_that_fit_are_spread_and_nothing_is_provisioned(bench: ModuleType) -> None:
    static = (bench.Pool(bench.L4, 1, 4), bench.Pool(bench.T4, 1, 4))
    case = bench.Case("fits", static, (bench.Growable(bench.H100, 8, 8),), 2, steps=1000)
    side = bench.autoscaler(case)
    on_l4, on_t4 = seconds(bench, case, bench.L4), seconds(bench, case, bench.T4)
    # One pod on each node (least allocated first), none on the faster H100s a pool could add.
    assert side.makespan_hours == pytest.approx(max(on_l4, on_t4) / 3600)
    assert side.gpu_hours == pytest.approx((on_l4 + on_t4) / 3600)
    assert (side.pools, side.cost) == ("0 GPUs", 0.0)


def test_pending_pods_get_the_cheapest_pool_after_its_delay_then_queue(bench: ModuleType) -> None:
    pools = (bench.Growable(bench.H100, 1, 8, delay=300), bench.Growable(bench.RTX4090, 1, 4, delay=300))
    case = bench.Case("grows", (bench.Pool(bench.L4, 1, 1),), pools, 4, steps=1000)
    side = bench.autoscaler(case)
    l4 = seconds(bench, case, bench.L4)
    rtx = seconds(bench, case, bench.RTX4090, pool=True)
    h100 = seconds(bench, case, bench.H100, pool=True)
    # Pod 0 on the L4; pods 1 and 2 Pending: a GPU of the cheapest pool (RTX 4090), then of the
    # next with headroom (H100), both after the delay; pod 3 waits for the first GPU freed.
    assert side.pools == "2 GPUs"
    assert 300 + h100 < min(l4, 300 + rtx)  # the H100's is freed first, so pod 3 runs there
    assert side.makespan_hours == pytest.approx(max(l4, 300 + rtx, 300 + 2 * h100) / 3600)
    assert side.gpu_hours == pytest.approx((l4 + rtx + 2 * h100) / 3600)
    assert side.cost == pytest.approx((2 * h100 * 3.00 + rtx * 0.50) / 3600)


def test_atoll_is_never_slower_than_the_static_fleet(bench: ModuleType) -> None:
    for case in bench.SUITE[:1] + bench.SUITE[-2:]:  # a fleet that grows and the two controls: seconds, not minutes
        row = bench.run_case(case)
        assert row["atoll"]["makespan_hours"] <= row["static"]["makespan_hours"] * (1 + 1e-9)
        if row["atollAtGoalDeadline"]["meets"]:
            assert row["atollAtGoalDeadline"]["makespan_hours"] <= row["atollAtGoalDeadline"]["deadlineHours"] * (
                1 + 1e-9
            )
        costs = [point["cost"] for point in row["curve"]]
        assert costs == sorted(costs, reverse=True)  # a later deadline never costs more
