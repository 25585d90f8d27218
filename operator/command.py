"""`atoll operator`: run the kopf operator, out of cluster (KUBECONFIG) or in cluster.

It watches all namespaces unless --namespace is given, and runs until SIGTERM / Ctrl-C.
Runs without spec.storage.uri use --default-store with the credentials of
--default-store-secret (a Secret of that name in the run's namespace). With --leader-elect,
several replicas share one Lease and only its holder acts; --metrics-port serves /metrics,
/healthz and /readyz (docs/operations.md).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import TYPE_CHECKING

from atoll.operator import collector
from atoll.operator.leader import LEASE_NAME, LeaseTimings
from atoll.operator.placement.autoscalers import TERMINATION_CONDITIONS
from atoll.operator.settings import DEFAULT_IMAGE

if TYPE_CHECKING:
    from collections.abc import Callable

    from atoll.operator.islands.remote import Islands
    from atoll.operator.kube import Kube
    from atoll.operator.nodepools import NodePoolWatch
    from atoll.operator.placement.nodegroups import NodeGroupSpec

HELP = "run the operator that reconciles DDMRuns (kopf)"


CONDITION_TYPE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")


def condition_types(text: str) -> tuple[str, ...]:
    """`--termination-conditions`: comma-separated node condition types (empty: none)."""
    types = tuple(part.strip() for part in text.split(",") if part.strip())
    for kind in types:
        if not CONDITION_TYPE.match(kind):
            raise argparse.ArgumentTypeError(f"{kind!r} is not a node condition type")
    return types


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
        "--termination-conditions", type=condition_types, default=TERMINATION_CONDITIONS, metavar="TYPES",
        help="node condition types (comma-separated) that announce a node's end when True: its experts checkpoint"
        f" and move (default {','.join(TERMINATION_CONDITIONS)}; '' for none)",
    )  # fmt: skip
    parser.add_argument(
        "--max-gpus-per-pod", type=int, metavar="N", help="cap GPUs per stage pod (1 on fleets with fake GPUs)"
    )
    parser.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    islands = parser.add_argument_group("compute islands")
    islands.add_argument(
        "--island-namespace",
        metavar="NS",
        help="probe every ComputeIsland with its kubeconfig Secret in NS and keep its status current (default: off)",
    )
    islands.add_argument(
        "--island-interval", type=float, default=10.0, metavar="S",
        help="seconds between probes of a connected island (its nodes; its pods are watched)",
    )  # fmt: skip
    parser.add_argument(
        "--node-pool-interval", type=float, default=30.0, metavar="S",
        help="seconds between reads of Karpenter NodePools (and cluster-autoscaler's node groups), planned over as"
        " growable pools (0: never read them)",
    )  # fmt: skip
    parser.add_argument(
        "--node-groups", metavar="YAML", default="",
        help="cluster-autoscaler node groups to plan over, a YAML or JSON list of {name, product, gpusPerNode,"
        " nodeLabels, provisioningSeconds, costPerGpuHour, pool} (docs/autoscaling.md); their sizes are read from"
        " its status ConfigMap",
    )  # fmt: skip
    parser.add_argument(
        "--autoscaler-status", metavar="NS/NAME", default="kube-system/cluster-autoscaler-status",
        help="cluster-autoscaler's status ConfigMap (default kube-system/cluster-autoscaler-status)",
    )  # fmt: skip
    election = parser.add_argument_group("high availability")
    election.add_argument(
        "--leader-elect", action="store_true", help="run as one of several replicas: only the Lease holder acts"
    )
    election.add_argument(
        "--leader-namespace", metavar="NS", help="namespace of the Lease (default: the pod's own, or $POD_NAMESPACE)"
    )
    election.add_argument(
        "--leader-lease", default=LEASE_NAME, metavar="NAME", help=f"Lease name (default {LEASE_NAME})"
    )
    election.add_argument(
        "--leader-identity", metavar="ID", help="this replica's name in the Lease (default: the pod's name)"
    )
    defaults = LeaseTimings()
    election.add_argument(
        "--lease-seconds", type=float, default=defaults.lease_seconds, metavar="S",
        help="a standby takes over when the Lease was not renewed for this long",
    )  # fmt: skip
    election.add_argument(
        "--renew-seconds", type=float, default=defaults.renew_seconds, metavar="S",
        help="the leader stops acting this long after its last successful renewal began (< --lease-seconds)",
    )  # fmt: skip
    election.add_argument(
        "--retry-seconds", type=float, default=defaults.retry_seconds, metavar="S",
        help="how often the Lease is acquired or renewed",
    )  # fmt: skip
    probes = parser.add_argument_group("metrics and probes")
    probes.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve /metrics, /healthz and /readyz on PORT (default: off)"
    )
    probes.add_argument(
        "--metrics-address",
        default="0.0.0.0",  # noqa: S104 - a pod's probes and Prometheus reach it on the pod's IP
        metavar="ADDR",
        help="address to bind (default 0.0.0.0)",
    )
    parser.add_argument("--verbose", action="store_true", help="also log every handler run (kopf's own lines)")
    parser.add_argument(
        "--switch-interval-ms", type=_positive, metavar="MS",
        help="how long one Python thread may hold the interpreter while others wait"
        " (sys.setswitchinterval; default: CPython's, 5)",
    )  # fmt: skip
    parser.add_argument(
        "--gc-threshold", type=_positive_int, default=collector.GEN0_THRESHOLD, metavar="N",
        help="collect the youngest generation of the garbage collector every N allocations"
        f" (gc.set_threshold; default {collector.GEN0_THRESHOLD}, CPython's is 700)",
    )  # fmt: skip


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _islands(args: argparse.Namespace, kube: Kube, acting: Callable[[], bool]) -> Islands | None:
    """The islands experts may be dispatched to (with --island-namespace), else None."""
    if not args.island_namespace:
        return None
    from atoll.operator.islands.registry import IslandRegistry
    from atoll.operator.islands.remote import Islands

    return Islands(IslandRegistry(), kube, acting=acting)


def main(args: argparse.Namespace) -> int:  # noqa: PLR0915 - a few lines per part the operator starts
    import kopf

    from atoll.log import get_logger
    from atoll.operator.api_json import decode_watches_with_orjson
    from atoll.operator.handlers import Replica, build_registry, kopf_settings
    from atoll.operator.kube import Kube, load_config
    from atoll.operator.leader import AlwaysLeader, FencedKube, LeaderElector, Leadership, in_cluster_namespace
    from atoll.operator.metrics import OperatorMetrics
    from atoll.operator.probes import Health, serve
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
        termination_conditions=args.termination_conditions,
    )
    log = get_logger("atoll.operator")
    if not args.verbose:
        # kopf logs every timer run at INFO ("Timer 'reconcile' succeeded."): one line per run per tick.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    decode_watches_with_orjson()
    elector: LeaderElector | None = None
    leadership: Leadership = AlwaysLeader()
    if args.leader_elect:
        namespace = args.leader_namespace or in_cluster_namespace()
        if not namespace:
            log.error("--leader-elect needs --leader-namespace out of cluster (or $POD_NAMESPACE)")
            return 2
        try:
            timings = LeaseTimings(
                lease_seconds=args.lease_seconds, renew_seconds=args.renew_seconds, retry_seconds=args.retry_seconds
            )
        except ValueError as error:
            log.error(f"--lease-seconds/--renew-seconds/--retry-seconds: {error}")
            return 2
        # Its own client: renewals never queue behind the reconcilers' requests.
        elector = LeaderElector(
            load_config(args.kubeconfig), namespace=namespace, name=args.leader_lease,
            identity=args.leader_identity, timings=timings,
        )  # fmt: skip
        leadership = elector
    api = load_config(args.kubeconfig)
    kube = FencedKube(api, leadership) if elector is not None else Kube(api)
    metrics = OperatorMetrics(leadership)
    replica = Replica(leadership=leadership, metrics=metrics, health=Health(leadership))
    islands = _islands(args, kube, leadership.acting)
    node_pools = _node_pools(args)
    registry = build_registry(
        Reconciler(kube, settings, timer=metrics.record_step, islands=islands, node_pools=node_pools),
        kube, settings, replica,
    )  # fmt: skip
    if args.metrics_port is not None:
        server = serve(metrics, replica.health, args.metrics_address, args.metrics_port)
        log.info("metrics and probes served", address=args.metrics_address, port=server.server_port)
    log.info(
        "operator starting",
        namespaces=list(settings.namespaces) or "all",
        image=settings.image,
        default_store=settings.default_store or None,
        default_store_secret=settings.default_store_secret,
        leader_election=None if elector is None else f"{elector.namespace}/{elector.name} as {elector.identity}",
    )
    if elector is not None:
        elector.start()
    monitor = None
    if args.island_namespace:
        from atoll.operator.islands.monitor import IslandMonitor
        from atoll.operator.islands.watch import IslandWatches

        watches = None if islands is None else IslandWatches(islands.registry.watched)
        monitor = IslandMonitor(
            load_config(args.kubeconfig), args.island_namespace,
            interval_seconds=args.island_interval, acting=leadership.acting, islands=islands, watches=watches,
        ).start()  # fmt: skip
        log.info("probing compute islands", secrets_namespace=args.island_namespace)
    if args.switch_interval_ms is not None:
        # The operator is dozens of threads waiting on the API server beside a few that compute
        # (the makespan planner); a shorter interval lets the waiting ones in sooner. Measured,
        # without a clear gain yet: "Operator scale" in docs/benchmarks.md.
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    collector.tune(args.gc_threshold)  # after every import and setup: fewer full collections (the module says why)
    try:
        kopf.run(
            registry=registry,
            settings=kopf_settings(settings),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=args.liveness,
        )
    finally:
        if node_pools is not None:
            node_pools.stop()
        if monitor is not None:
            monitor.stop()
        if elector is not None:
            elector.stop(release=True)
    return 0


def _node_pools(args: argparse.Namespace) -> NodePoolWatch | None:
    """The NodePool lister, started (None with --node-pool-interval 0)."""
    from atoll.operator.kube import load_config
    from atoll.operator.nodepools import NodePoolWatch

    if args.node_pool_interval <= 0:
        return None
    groups, status = node_group_options(args)
    return NodePoolWatch(
        load_config(args.kubeconfig), interval_seconds=args.node_pool_interval, node_groups=groups,
        autoscaler_status=status,
    ).start()  # fmt: skip


def node_group_options(args: argparse.Namespace) -> tuple[tuple[NodeGroupSpec, ...], tuple[str, str]]:
    """The declared node groups and where cluster-autoscaler's status is (SystemExit 2 naming the flag when bad)."""
    from atoll.operator.placement.nodegroups import NodeGroupsError, parse_node_groups

    namespace, _, name = str(args.autoscaler_status).partition("/")
    if not namespace or not name or "/" in name:
        raise SystemExit(f"--autoscaler-status: {args.autoscaler_status!r} is not NAMESPACE/NAME")
    try:
        return parse_node_groups(args.node_groups), (namespace, name)
    except NodeGroupsError as error:
        raise SystemExit(str(error)) from None
