"""`atoll operator`: run the kopf operator, out of cluster (KUBECONFIG) or in cluster.

It watches all namespaces unless --namespace is given, and runs until SIGTERM / Ctrl-C.
Runs without spec.storage.uri use --default-store with the credentials of
--default-store-secret (a Secret of that name in the run's namespace).
"""

from __future__ import annotations

import argparse
import logging

from atoll.operator.settings import DEFAULT_IMAGE

HELP = "run the operator that reconciles DDMRuns (kopf)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace", action="append", default=[], metavar="NS", help="watch only NS (repeatable); default: all"
    )
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: in cluster, else $KUBECONFIG)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"image of the stage pods (default {DEFAULT_IMAGE})")
    parser.add_argument("--image-pull-policy", default="IfNotPresent", choices=["Always", "IfNotPresent", "Never"])
    parser.add_argument(
        "--default-store",
        default="",
        metavar="URI",
        help="store root of runs without spec.storage.uri (s3://… or a path)",
    )
    parser.add_argument(
        "--default-store-secret", metavar="NAME", help="Secret with accessKey, secretKey, endpoint for --default-store"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, metavar="S", help="seconds between reconciliations of a run"
    )
    parser.add_argument(
        "--store-poll", type=float, default=5.0, metavar="S", help="seconds between store reads of a run"
    )
    parser.add_argument(
        "--store-grace",
        type=float,
        default=60.0,
        metavar="S",
        help="fail a run whose store is never reachable this long",
    )
    parser.add_argument(
        "--heartbeat-stale", type=float, default=120.0, metavar="S", help="Degraded when a heartbeat is older than this"
    )
    parser.add_argument("--service-account", metavar="NAME", help="ServiceAccount of the stage pods")
    parser.add_argument(
        "--move-check",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between checks for faster free GPUs (0: off)",
    )
    parser.add_argument(
        "--max-gpus-per-pod", type=int, metavar="N", help="cap GPUs per stage pod (1 on fleets with fake GPUs)"
    )
    parser.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true", help="also log every handler run (kopf's own lines)")


def main(args: argparse.Namespace) -> int:
    import kopf

    from atoll.log import get_logger
    from atoll.operator.handlers import build_registry, kopf_settings
    from atoll.operator.kube import Kube, load_config
    from atoll.operator.reconcile import Reconciler
    from atoll.operator.settings import OperatorSettings

    settings = OperatorSettings(
        namespaces=tuple(args.namespace),
        image=args.image,
        image_pull_policy=args.image_pull_policy,
        default_store=args.default_store,
        default_store_secret=args.default_store_secret,
        interval_seconds=args.interval,
        store_poll_seconds=args.store_poll,
        store_grace_seconds=args.store_grace,
        heartbeat_stale_seconds=args.heartbeat_stale,
        service_account=args.service_account,
        max_gpus_per_pod=args.max_gpus_per_pod,
        move_check_seconds=args.move_check,
    )
    log = get_logger("atoll.operator")
    if not args.verbose:
        # kopf logs every timer run at INFO ("Timer 'reconcile' succeeded."): one line per run per tick.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kube = Kube(load_config(args.kubeconfig))
    registry = build_registry(Reconciler(kube, settings), kube, settings)
    log.info(
        "operator starting",
        namespaces=list(settings.namespaces) or "all",
        image=settings.image,
        default_store=settings.default_store or None,
        default_store_secret=settings.default_store_secret,
    )
    kopf.run(
        registry=registry,
        settings=kopf_settings(settings),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=args.liveness,
    )
    return 0
