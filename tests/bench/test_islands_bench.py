"""The islands benchmark's comparison holds on its first mix: the union is never slower than any side."""

from __future__ import annotations

from bench.islands import MIXES, run_mix


def test_across_islands_beats_one_island_and_matches_the_hand_split() -> None:
    row = run_mix(MIXES[0])

    assert row["speedupOverBestIsland"] > 1.05, "three islands' GPUs must beat the best one alone"
    assert row["speedupOverHandSplit"] >= 1 - 1e-9
    assert row["acrossHours"] > 0
