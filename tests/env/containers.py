"""Pure pieces of running a pod's container from its image, the way the kubelet and the
container runtime resolve them: the image's configuration, the process's argv, environment,
user and groups, and which volume goes where.

Nothing here touches the API server, the image storage or the file system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.env.pods import ContainerConfigError, expand

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VOLUME_KINDS = ("emptyDir", "projected", "secret", "configMap", "downwardAPI", "hostPath")
"""Volume sources the runtime can give an image pod; any other is a CreateContainerConfigError."""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image configuration a container starts from."""

    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    user: str
    working_dir: str

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> ImageConfig:
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        return cls(
            env=env,
            entrypoint=list(config.get("Entrypoint") or []),
            cmd=list(config.get("Cmd") or []),
            user=str(config.get("User") or ""),
            working_dir=str(config.get("WorkingDir") or "/"),
        )


@dataclass(frozen=True)
class Mount:
    """One mount in the container: a host path bound at target, or a fresh tmpfs (source None)."""

    target: str
    source: str | None
    read_only: bool = False
    size_bytes: int | None = None
    """tmpfs size limit (emptyDir medium Memory with sizeLimit)."""


@dataclass(frozen=True)
class Identity:
    """The user the container's process runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = field(default=())


def argv(container: Mapping[str, Any], image: ImageConfig, env: Mapping[str, str]) -> list[str]:
    """command replaces the image's ENTRYPOINT and args its CMD (Kubernetes' rule), $(VAR) expanded."""
    command = container.get("command")
    args = container.get("args")
    words = [*command, *(args or [])] if command else [*image.entrypoint, *(args if args is not None else image.cmd)]
    if not words:
        raise ContainerConfigError(f"container {container.get('name')!r}: no command, and the image has none")
    return [expand(str(word), env) for word in words]


def environment(
    image: ImageConfig, resolved: Mapping[str, str], *, hostname: str, api_host: str, api_port: int
) -> dict[str, str]:
    """The image's Env, then the kubelet's (HOSTNAME, the `kubernetes` Service), then the container's own."""
    env = dict(image.env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["HOSTNAME"] = hostname
    env.update({
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{api_host}:{api_port}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_ADDR": api_host,
        "KUBERNETES_PORT_443_TCP_PORT": str(api_port),
    })  # fmt: skip
    env.update(resolved)
    return env


def _security(pod: Mapping[str, Any], container: Mapping[str, Any], key: str) -> Any:
    """A securityContext field: the container's wins over the pod's."""
    value = (container.get("securityContext") or {}).get(key)
    return value if value is not None else (pod["spec"].get("securityContext") or {}).get(key)


def identity(pod: Mapping[str, Any], container: Mapping[str, Any], image: ImageConfig, passwd: str) -> Identity:
    """runAsUser / runAsGroup (else the image's USER, names looked up in its /etc/passwd), plus
    fsGroup and supplementalGroups; runAsNonRoot refuses root like the kubelet does."""
    image_user, _, image_group = image.user.partition(":")
    uid = _security(pod, container, "runAsUser")
    gid = _security(pod, container, "runAsGroup")
    if uid is None:
        uid, default_gid = _lookup_user(image_user or "0", passwd)
        gid = gid if gid is not None else (int(image_group) if image_group.isdigit() else default_gid)
    elif gid is None:
        gid = int(image_group) if image_group.isdigit() else _lookup_user(str(uid), passwd)[1]
    if _security(pod, container, "runAsNonRoot") and int(uid) == 0:
        raise ContainerConfigError("container has runAsNonRoot and image will run as root")
    context = pod["spec"].get("securityContext") or {}
    groups = [int(g) for g in context.get("supplementalGroups") or []]
    if context.get("fsGroup") is not None:
        groups.append(int(context["fsGroup"]))
    return Identity(int(uid), int(gid), tuple(dict.fromkeys(groups)))


def _lookup_user(user: str, passwd: str) -> tuple[int, int]:
    if user.isdigit():
        for line in passwd.splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[2] == user:
                return int(user), int(fields[3])
        return int(user), 0  # not in the image's passwd: group root, as containerd does
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise ContainerConfigError(f"unable to find user {user}: no matching entries in passwd file")


def volume_of(pod: Mapping[str, Any], name: str) -> tuple[str, Mapping[str, Any]]:
    """(kind, source) of the pod's volume `name`; ContainerConfigError for one the runtime cannot give."""
    for volume in pod["spec"].get("volumes") or []:
        if volume.get("name") != name:
            continue
        for kind in VOLUME_KINDS:
            if kind in volume:
                return kind, volume[kind] or {}
        other = sorted(k for k in volume if k != "name")
        raise ContainerConfigError(f"volume {name!r}: {', '.join(other)} volumes are not supported by this runtime")
    raise ContainerConfigError(f'volume "{name}" not found in the pod spec')


def read_only_root(container: Mapping[str, Any]) -> bool:
    return bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))


def no_new_privileges(container: Mapping[str, Any]) -> bool:
    return (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is False


def working_dir(container: Mapping[str, Any], image: ImageConfig) -> str:
    return str(container.get("workingDir") or image.working_dir or "/")
