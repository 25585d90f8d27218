"""`atoll agent`: the NVML node agent, run as a DaemonSet (one pod per GPU node).

Publishes GPU health, free memory and a heartbeat as annotations on its own Node (name
from --node or NODE_NAME). `--print` writes the annotations to stdout instead (no
Kubernetes needed). Exits with a clear message where NVML is absent.

As a DaemonSet: NODE_NAME from the downward API (fieldRef spec.nodeName); a
ServiceAccount allowed to `get` and `patch` `nodes`; every GPU visible through the
NVIDIA container runtime (NVIDIA_VISIBLE_DEVICES=all) *without* requesting
nvidia.com/gpu, so the agent holds no GPU; a toleration for the nvidia.com/gpu taint and
nodeSelector nvidia.com/gpu.present=true.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType, ModuleType
from typing import Any

HELP = "run the NVML node agent: GPU health, free memory and a heartbeat as annotations on this node"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", help="this node's name (default: $NODE_NAME)")
    parser.add_argument(
        "--interval", type=float, default=30.0, metavar="SECONDS", help="seconds between reports (default 30)"
    )
    parser.add_argument("--once", action="store_true", help="report once and exit")
    parser.add_argument("--print", action="store_true", help="print the annotations as JSON instead of patching")
    parser.add_argument(
        "--ignore-xids",
        default="",
        metavar="N,N",
        help="XIDs to ignore besides the application XIDs 13,31,43,45,68,109",
    )


def main(args: argparse.Namespace) -> int:
    return run(args)


def run(
    args: argparse.Namespace,
    *,
    nvml_module: ModuleType | Any | None = None,
    api: Any | None = None,
    stop: threading.Event | None = None,
) -> int:
    """The command, with NVML, the API client and the stop signal injectable (tests)."""
    from atoll.errors import AtollError
    from atoll.operator.agent.agent import Agent, NodePublisher
    from atoll.operator.agent.nvml import APPLICATION_XIDS, Nvml

    if args.interval <= 0:
        raise AtollError(f"--interval must be positive, got {args.interval}")
    try:
        extra = frozenset(int(x) for x in args.ignore_xids.split(",") if x.strip())
    except ValueError:
        raise AtollError(f"--ignore-xids must be comma-separated integers, got {args.ignore_xids!r}") from None
    node = args.node or os.environ.get("NODE_NAME")
    if not node and not args.print:
        raise AtollError("the agent needs its node's name: --node NAME or NODE_NAME (the downward API's spec.nodeName)")
    nvml = Nvml(nvml_module, ignored_xids=APPLICATION_XIDS | extra)
    nvml.open()
    stop = stop or _stop_on_signals()
    publish = _print if args.print else NodePublisher(str(node), api)
    try:
        Agent(nvml, publish, interval_seconds=args.interval).run(stop, once=args.once)
    finally:
        nvml.close()
    return 0


def _print(summary: dict[str, str]) -> None:
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop
