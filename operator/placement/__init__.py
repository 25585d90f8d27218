"""Heterogeneous GPU placement: the pure planner the operator and `atoll plan` call.

`plan_run(spec, nodes)` places a run's experts; `replan(...)` places them again after a
failure or a lost node, keeping running experts where they are; `migrations(...)` says
which running experts to move to faster GPUs that became free, at their next checkpoint.
Nothing here calls the Kubernetes API.
"""

from atoll.operator.placement.fleet import Exclusion, Fleet, GpuNode, read_fleet
from atoll.operator.placement.plan import Assignment, Plan
from atoll.operator.placement.planner import (
    experts_of,
    plan,
    plan_run,
    speed_table,
)
from atoll.operator.placement.problem import ExpertWork, PlacementError
from atoll.operator.placement.replan import Migration, migrations, replan
from atoll.operator.placement.speeds import SpeedTable, observed_speeds, throughput
from atoll.operator.placement.workload import Workload, workload_of

__all__ = [
    "Assignment",
    "Exclusion",
    "ExpertWork",
    "Fleet",
    "GpuNode",
    "Migration",
    "PlacementError",
    "Plan",
    "SpeedTable",
    "Workload",
    "experts_of",
    "migrations",
    "observed_speeds",
    "plan",
    "plan_run",
    "read_fleet",
    "replan",
    "speed_table",
    "throughput",
    "workload_of",
]
