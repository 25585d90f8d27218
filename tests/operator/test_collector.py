"""The operator's garbage collector settings (atoll.operator.collector) and their flag."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Iterator

import pytest

from atoll.operator import collector
from atoll.operator.command import add_arguments


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.usefixtures("restored")
def test_tune_freezes_what_exists_and_raises_only_the_youngest_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    kept: list[list[int]] = [[]]  # a tracked container alive now: frozen, never scanned again
    assert any(o is kept for o in gc.get_objects())
    before = collector.tune(12_345)
    assert before == (700, 10, 10)
    assert gc.get_threshold() == (12_345, 10, 10)
    assert gc.get_freeze_count() > 0
    assert all(o is not kept for o in gc.get_objects())  # the collector's generations no longer hold it


@pytest.mark.usefixtures("restored")
def test_cyclic_garbage_is_still_freed_after_tuning() -> None:
    collector.tune()
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_the_flag_defaults_to_the_tuned_threshold_and_refuses_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse().gc_threshold == collector.GEN0_THRESHOLD > 700
    assert parse("--gc-threshold", "700").gc_threshold == 700
    with pytest.raises(SystemExit):
        parse("--gc-threshold", "0")
    assert "--gc-threshold: must be >= 1, got 0" in capsys.readouterr().err
