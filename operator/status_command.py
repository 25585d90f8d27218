"""`atoll status RUN`: a DDMRun's phase, conditions, stages and experts, as the operator reports them."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import RenderableType

    from atoll.operator.submit import RunView

HELP = "show a DDMRun's phase, conditions, stages and experts (from the current kube-context)"
TERMINAL = ("Succeeded", "Failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the DDMRun's name")
    parser.add_argument("-n", "--namespace", help="namespace (default: the kube-context's)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    parser.add_argument(
        "-w", "--watch", action="store_true", help="refresh every few seconds until the run succeeds or fails"
    )
    parser.add_argument("--interval", type=float, default=5.0, metavar="S", help="refresh interval with --watch")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from atoll.operator.submit import read_run

    console = Console()
    while True:
        view = read_run(args.run, namespace=args.namespace, kubeconfig=args.kubeconfig)
        if args.watch:
            console.clear()
        console.print(render(view))
        if not args.watch or view.status.phase in TERMINAL:
            return 1 if view.status.phase == "Failed" else 0
        time.sleep(args.interval)


def render(view: RunView) -> RenderableType:
    """A rich renderable of a RunView: summary, conditions, stages and experts."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    status = view.status
    summary = Text.assemble(
        (f"{view.namespace}/{view.name}", "bold"),
        f"  phase {status.phase}",
        f"  experts {status.experts_ready}/{status.experts_total}",
        f"  progress {status.progress_fraction:.0%}",
    )
    lines: list[RenderableType] = [summary]
    if status.message:
        lines.append(Text(status.message))
    for label, value in (("store", status.store_uri), ("model", status.model_uri)):
        if value:
            lines.append(Text(f"{label}: {value}"))
    conditions = Table("condition", "status", "reason", "message", title=None, box=None, pad_edge=False)
    for condition in status.conditions:
        conditions.add_row(condition.type, condition.status, condition.reason, condition.message)
    stages = Table("stage", "phase", "attempt", "restarts", "node", "message", box=None, pad_edge=False)
    for name in ("partition", "router", "assemble", "evaluate"):
        stage = getattr(status.stages, name)
        stages.add_row(
            name, stage.phase, str(stage.attempt), str(stage.restarts), stage.node or "", stage.message or ""
        )
    experts = Table(
        "expert", "examples", "phase", "node", "gpu", "step", "loss", "checkpoint", "restarts", box=None, pad_edge=False
    )
    for expert in view.experts:
        s = expert.status
        experts.add_row(
            str(expert.expert),
            str(expert.examples),
            s.phase,
            s.node or "",
            f"{s.gpus or ''}× {s.gpu}" if s.gpu else "",
            f"{s.step or 0}/{s.total_steps or '?'}",
            f"{s.loss:.4f}" if s.loss is not None else "",
            str(s.last_checkpoint.step) if s.last_checkpoint else "",
            str(s.restarts),
        )
    return Group(*lines, Text(""), conditions, Text(""), stages, Text(""), experts)
