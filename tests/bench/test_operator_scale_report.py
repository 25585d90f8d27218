"""bench/operator_scale.py ends with the figures that settle its goal (every DDMExpert Running
within 10 s of its pod's binding), from bench/scale_status.py: their spread, the verdict, and
the writes per expert."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_status", ROOT / "bench" / "scale_status.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(module: ModuleType, delays: list[float], *, running: int = 4) -> dict[str, Any]:
    spread = module.spread(sorted(delays))
    return {
        "nodes": 1000, "runs": 2, "experts_per_run": 2, "expert_pods": 4, "kwok_pod_workers": 32,
        "load_before": "1.0 / 1.0 / 1.0", "load_after": "3.0 / 2.0 / 1.0", "experts_running": running,
        "bound_to_running": spread, "bound_to_pod_running": spread, "pod_running_to_running": spread,
        "operator_ddmexpert_writes": 8, "operator_ddmrun_writes": 6,
    }  # fmt: skip


def test_the_report_gives_median_p95_max_and_the_writes_per_expert() -> None:
    module = bench()
    text = module.acceptance(results(module, [1.0, 2.0, 3.0, 9.5]))
    assert "median 3.0 s, p95 9.5 s, max 9.5 s over 4 of 4 experts" in text
    assert "goal (every one within 10 s) MET" in text
    assert "8 DDMExpert (2.00 per expert)" in text
    assert "6 DDMRun (3.0 per run, 1.50 per expert)" in text
    assert "kwok pod workers 32" in text


def test_one_late_expert_or_one_never_running_misses_the_goal() -> None:
    module = bench()
    assert "NOT MET" in module.acceptance(results(module, [1.0, 2.0, 3.0, 10.5]))
    assert "NOT MET" in module.acceptance(results(module, [1.0, 2.0, 3.0], running=3))


def test_the_status_write_time_is_the_status_entry_of_managed_fields() -> None:
    module = bench()
    item = {
        "metadata": {
            "managedFields": [
                {"manager": "atoll", "operation": "Update", "time": "2026-12-03T04:00:00Z"},
                {"manager": "atoll", "operation": "Update", "subresource": "status", "time": "2026-12-03T04:00:07Z"},
            ]
        }
    }
    assert module.status_written(item) - module.status_written({"metadata": {"managedFields": [
        {"subresource": "status", "time": "2026-12-03T04:00:00Z"}]}}) == 7.0  # fmt: skip
    assert module.status_written({"metadata": {}}) is None
    late = {**results(module, [1.0]), "running_seen_late": {"median": 0.4, "max": 12.0}, "watch_restarts": [[3.0, "x"]]}
    assert "the bench saw those writes late by median 0.4 s, max 12.0 s" in module.acceptance(late)
    assert "restarted 1 times" in module.acceptance(late)


def test_the_report_splits_the_expert_writes_by_the_phase_they_wrote() -> None:
    module = bench()
    phases = {**results(module, [1.0]), "operator_ddmexpert_write_phases": {"Running": 4, "Pending": 3}}
    assert "DDMExpert writes by phase written: Pending 3, Running 4" in module.acceptance(phases)
    assert "by phase written" not in module.acceptance(results(module, [1.0]))  # an older run's results
