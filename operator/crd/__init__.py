"""The CustomResourceDefinitions of atoll (DDMRun, DDMExpert, ComputeIsland), generated from the API models."""

from atoll.operator.crd.definitions import EXPERT, ISLAND, RUN, Kind, all_crds, expert_crd, island_crd, run_crd
from atoll.operator.crd.render import crd_file_name, render_crd, render_crds

__all__ = [
    "EXPERT",
    "ISLAND",
    "RUN",
    "Kind",
    "all_crds",
    "crd_file_name",
    "expert_crd",
    "island_crd",
    "render_crd",
    "render_crds",
    "run_crd",
]
