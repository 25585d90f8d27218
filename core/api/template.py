"""spec.template: what a user adds to every stage pod, merged the way KubeRay and JobSet do.

Labels, annotations, image pull secrets, a priority class, a termination grace period,
extra environment variables, extra volumes and their mounts (e.g. a PVC of weights).
Atoll owns what makes a stage a stage: its `atoll.dev/*` labels and annotations, the store
credentials (`MINIO_*`), `ATOLL_*` settings, the pod's identity variables and its own
volumes (`scratch`, `dshm`, `atoll-*`) and their mount points; the template may not
touch those, and says so with the field named. The merge itself is
atoll.operator.template.apply_template. Pure data: never import Kubernetes clients here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from atoll.api.base import SpecModel, field_error
from atoll.api.names import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    dns_label_problem,
    env_name_problem,
    qualified_name_problem,
)
from atoll.api.placement import LabelValue

RESERVED_KEY_DOMAIN = "atoll.dev"
"""Label and annotation keys under this domain (or a subdomain of it) belong to Atoll."""
RESERVED_ENV = ("NODE_NAME", "POD_NAME")
RESERVED_ENV_PREFIXES = ("MINIO_", "ATOLL_")
RESERVED_VOLUMES = ("scratch", "dshm")
RESERVED_VOLUME_PREFIX = "atoll-"
RESERVED_MOUNT_PATHS = ("/tmp", "/dev/shm")  # noqa: S108 - Atoll's scratch emptyDir and shared memory
VOLUME_SOURCES = (
    "persistentVolumeClaim",
    "configMap",
    "secret",
    "emptyDir",
    "hostPath",
    "nfs",
    "csi",
    "ephemeral",
    "projected",
    "downwardAPI",
    "image",
)
"""The volume sources a template volume may use (each as in a Pod's `volumes`)."""
MAX_ITEMS = 64


def reserved_key(key: str) -> bool:
    """Whether a label or annotation key is Atoll's (`atoll.dev/…` or `<sub>.atoll.dev/…`)."""
    prefix = key.rpartition("/")[0]
    return prefix == RESERVED_KEY_DOMAIN or prefix.endswith(f".{RESERVED_KEY_DOMAIN}")


def reserved_env(name: str) -> bool:
    """Whether an environment variable of the stage container is Atoll's."""
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)


def reserved_volume(name: str) -> bool:
    """Whether a volume name is Atoll's."""
    return name in RESERVED_VOLUMES or name.startswith(RESERVED_VOLUME_PREFIX)


def _keys(value: dict[str, str], what: str) -> dict[str, str]:
    for key in value:
        if problem := qualified_name_problem(key):
            raise ValueError(f"{what} key {key!r}: {problem}")
        if reserved_key(key):
            raise ValueError(f"{what} key {key!r}: keys under {RESERVED_KEY_DOMAIN}/ belong to Atoll")
    return value


def _dns_label(value: str) -> str:
    if problem := dns_label_problem(value):
        raise ValueError(f"invalid name {value!r}: {problem}")
    return value


def _absolute_path(value: str) -> str:
    parts = value.split("/")
    if not value.startswith("/") or any(part in (".", "..") for part in parts) or "\x00" in value:
        raise ValueError(f"{value!r} must be an absolute path without '.' or '..' segments")
    return value


DNSLabel = Annotated[
    str, Field(json_schema_extra={"pattern": DNS_LABEL_PATTERN, "maxLength": 63}), AfterValidator(_dns_label)
]
DNSSubdomain = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
AbsolutePath = Annotated[
    str, Field(json_schema_extra={"pattern": r"^/", "maxLength": 1024}), AfterValidator(_absolute_path)
]


class LocalObjectReference(SpecModel):
    """A reference to an object in the run's namespace, by name."""

    name: DNSSubdomain = Field(description="Name of the object (e.g. a Secret of type kubernetes.io/dockerconfigjson).")


class KeySelector(SpecModel):
    """A key of a Secret or ConfigMap in the run's namespace."""

    name: DNSSubdomain = Field(description="Name of the Secret or ConfigMap.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="The key whose value is used.")
    optional: bool | None = Field(default=None, description="Whether the Secret/ConfigMap or key may be absent.")


class FieldSelector(SpecModel):
    """A field of the pod (downward API), e.g. metadata.labels['team'] or status.podIP."""

    field_path: str = Field(min_length=1, max_length=256, description="Path of the field, as in a Pod's fieldRef.")
    api_version: str | None = Field(default=None, max_length=64, description="API version of the field path (v1).")


class ResourceSelector(SpecModel):
    """A resource request or limit of the stage container (downward API)."""

    resource: str = Field(
        pattern=r"^(limits|requests)\.[a-z0-9./-]+$",
        max_length=253,
        description="The resource, e.g. limits.cpu or requests.memory.",
    )
    divisor: str | None = Field(default=None, max_length=64, description="Unit of the value, e.g. 1Mi (a quantity).")


class EnvSource(SpecModel):
    """Where an environment variable's value comes from: exactly one of the four."""

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceSelector | None = Field(default=None, description="A resource of the container.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvSource:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef")
        return self


def _env_name(value: str) -> str:
    if problem := env_name_problem(value):
        raise ValueError(f"invalid environment variable name {value!r}: {problem}")
    if reserved_env(value):
        raise ValueError(
            f"{value} belongs to Atoll ({', '.join(RESERVED_ENV)} and {'*, '.join(RESERVED_ENV_PREFIXES)}* are"
            " set by the operator: store credentials come from spec.storage.secretRef)"
        )
    return value


class EnvVar(SpecModel):
    """An extra environment variable of the stage container."""

    name: Annotated[
        str, Field(json_schema_extra={"pattern": ENV_NAME_PATTERN, "maxLength": 256}), AfterValidator(_env_name)
    ] = Field(description="Variable name (not NODE_NAME, POD_NAME, MINIO_* or ATOLL_*, which Atoll sets).")
    value: str | None = Field(default=None, max_length=32_768, description="The value ($(VAR) references expand).")
    value_from: EnvSource | None = Field(default=None, description="Take the value from a Secret, ConfigMap or field.")

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise field_error(EnvVar, ("valueFrom",), "value and valueFrom are mutually exclusive", self.value_from)
        return self


def _volume_name(value: str) -> str:
    _dns_label(value)
    if reserved_volume(value):
        raise ValueError(
            f"volume name {value!r} belongs to Atoll ({', '.join(RESERVED_VOLUMES)} and {RESERVED_VOLUME_PREFIX}*)"
        )
    return value


VolumeSource = dict[str, Any]


class Volume(SpecModel):
    """An extra volume of every stage pod: a name and exactly one source, as in a Pod's volumes."""

    name: Annotated[
        str, Field(json_schema_extra={"pattern": DNS_LABEL_PATTERN, "maxLength": 63}), AfterValidator(_volume_name)
    ] = Field(description="Volume name, a DNS label (not scratch, dshm or atoll-*, which are Atoll's).")
    persistent_volume_claim: VolumeSource | None = Field(
        default=None, description="A PersistentVolumeClaim: {claimName, readOnly}."
    )
    config_map: VolumeSource | None = Field(default=None, description="A ConfigMap: {name, items, defaultMode}.")
    secret: VolumeSource | None = Field(default=None, description="A Secret: {secretName, items, defaultMode}.")
    empty_dir: VolumeSource | None = Field(default=None, description="An emptyDir: {medium, sizeLimit}.")
    host_path: VolumeSource | None = Field(default=None, description="A directory of the node: {path, type}.")
    nfs: VolumeSource | None = Field(default=None, description="An NFS export: {server, path, readOnly}.")
    csi: VolumeSource | None = Field(default=None, description="A CSI inline volume: {driver, volumeAttributes, …}.")
    ephemeral: VolumeSource | None = Field(
        default=None, description="A generic ephemeral volume: {volumeClaimTemplate}."
    )
    projected: VolumeSource | None = Field(default=None, description="A projected volume: {sources, defaultMode}.")
    downward_api: VolumeSource | None = Field(
        default=None, alias="downwardAPI", description="Downward API files: {items, defaultMode}."
    )
    image: VolumeSource | None = Field(default=None, description="An OCI image or artifact: {reference, pullPolicy}.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = [name for name in VOLUME_SOURCES if getattr(self, _python_name(name)) is not None]
        if len(sources) != 1:
            found = ", ".join(sources) or "none"
            raise ValueError(f"set exactly one volume source ({', '.join(VOLUME_SOURCES)}); found {found}")
        return self


def _python_name(camel: str) -> str:
    return "downward_api" if camel == "downwardAPI" else "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _mount_path(value: str) -> str:
    _absolute_path(value)
    if value.rstrip("/") in RESERVED_MOUNT_PATHS:
        raise ValueError(f"{value} is where Atoll mounts its own volumes ({', '.join(RESERVED_MOUNT_PATHS)})")
    return value


def _sub_path(value: str) -> str:
    if value.startswith("/") or any(part == ".." for part in value.split("/")):
        raise ValueError(f"{value!r} must be a relative path without '..'")
    return value


class VolumeMount(SpecModel):
    """Where the stage container mounts one of the template's volumes."""

    name: DNSLabel = Field(description="Name of a volume in template.volumes.")
    mount_path: Annotated[str, AfterValidator(_mount_path)] = Field(
        json_schema_extra={"pattern": r"^/", "maxLength": 1024},
        description="Absolute path in the container (not /tmp or /dev/shm, which are Atoll's).",
    )
    read_only: bool = Field(default=False, description="Mount read-only.")
    sub_path: Annotated[str, AfterValidator(_sub_path)] | None = Field(
        default=None,
        json_schema_extra={"pattern": r"^[^/]", "maxLength": 1024},
        description="Mount only this relative path of the volume.",
    )


class PodTemplate(SpecModel):
    """What every stage pod of the run gets on top of what Atoll builds (KubeRay/JobSet-style overlay).

    Labels and annotations are added (keys Atoll sets keep Atoll's values); environment
    variables are added to the stage container (replacing one of the same name Atoll set,
    except the ones Atoll owns); volumes and mounts are added; priorityClassName and
    terminationGracePeriodSeconds replace Atoll's.
    """

    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        description="Labels added to every stage pod (not under atoll.dev/).",
    )
    annotations: dict[str, Annotated[str, Field(max_length=65_536)]] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        description="Annotations added to every stage pod (not under atoll.dev/).",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="Secrets for pulling the stage image from a private registry.",
    )
    priority_class_name: DNSSubdomain | None = Field(
        default=None, description="PriorityClass of the stage pods (e.g. one that preempts batch work)."
    )
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Seconds a stopping stage pod gets to commit its checkpoint before it is killed.",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Extra environment variables of the stage container."
    )
    volumes: list[Volume] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Extra volumes of every stage pod (e.g. a weights PVC)."
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="Where the stage container mounts the extra volumes.",
    )

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return _keys(value, "label")

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return _keys(value, "annotation")

    @model_validator(mode="after")
    def _unique_and_resolved(self) -> PodTemplate:
        unique: list[tuple[str, list[str], str]] = [
            ("env", [item.name for item in self.env], "name"),
            ("volumes", [item.name for item in self.volumes], "name"),
            ("volumeMounts", [item.mount_path for item in self.volume_mounts], "mountPath"),
            ("imagePullSecrets", [item.name for item in self.image_pull_secrets], "name"),
        ]
        for field, values, what in unique:
            for index, value in enumerate(values):
                if value in values[:index]:
                    raise field_error(PodTemplate, (field, index), f"duplicate {what} {value!r}", value)
        volumes = {volume.name for volume in self.volumes}
        for index, mount in enumerate(self.volume_mounts):
            if mount.name not in volumes:
                raise field_error(
                    PodTemplate,
                    ("volumeMounts",),
                    f"volumeMounts[{index}].name {mount.name!r} names no volume in template.volumes",
                    mount.name,
                )
        return self
