"""Session-wide test settings: offline model hubs, deterministic small torch.

Environment fixtures (control plane, GPU fleet, MinIO, pod runtime) are defined in
tests/env/fixtures.py and registered here as a plugin.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP's default busy-waiting makes torch 5-12x slower whenever the 2 cores are shared
# with stage subprocesses (measured); passive waits cost nothing measurable when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.env.fixtures"]
