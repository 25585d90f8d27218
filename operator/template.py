"""Merging spec.template onto a built stage pod, the way KubeRay and JobSet merge a user's template.

The user's overlay wins where it may (priorityClassName, terminationGracePeriodSeconds, an
environment variable Atoll set that it does not own); Atoll keeps what makes the pod its
stage (labels and annotations it set, its own env, volumes and mounts). A clash the spec's
validation should have refused raises TemplateConflictError instead of being dropped.
Pure: no API calls; the input manifest is never modified.
"""

from __future__ import annotations

import copy
from typing import Any

from atoll.api.template import PodTemplate, reserved_env, reserved_key, reserved_volume
from atoll.errors import AtollError

Manifest = dict[str, Any]


class TemplateConflictError(AtollError):
    """spec.template collides with what Atoll built; the message names the template field."""


def apply_template(pod: Manifest, template: PodTemplate | None) -> Manifest:
    """`pod` with `template` merged in (a new manifest; `pod` is left as it was)."""
    merged = copy.deepcopy(pod)
    if template is None:
        return merged
    metadata = merged.setdefault("metadata", {})
    _add_keys(metadata.setdefault("labels", {}), template.labels, "labels")
    _add_keys(metadata.setdefault("annotations", {}), template.annotations, "annotations")
    spec = merged.setdefault("spec", {})
    if template.priority_class_name is not None:
        spec["priorityClassName"] = template.priority_class_name
    if template.termination_grace_period_seconds is not None:
        spec["terminationGracePeriodSeconds"] = template.termination_grace_period_seconds
    if template.image_pull_secrets:
        secrets = spec.setdefault("imagePullSecrets", [])
        names = {secret.get("name") for secret in secrets}
        secrets.extend({"name": ref.name} for ref in template.image_pull_secrets if ref.name not in names)
    if template.volumes:
        volumes = spec.setdefault("volumes", [])
        taken = {volume.get("name") for volume in volumes}
        for index, volume in enumerate(template.volumes):
            if volume.name in taken or reserved_volume(volume.name):
                raise TemplateConflictError(
                    f"spec.template.volumes[{index}].name: {volume.name!r} is one of Atoll's volumes"
                )
            volumes.append(volume.model_dump(by_alias=True, exclude_none=True, mode="json"))
    for container in spec.get("containers") or []:
        _merge_container(container, template)
    return merged


def _add_keys(target: dict[str, str], extra: dict[str, str], field: str) -> None:
    """Add `extra` to `target`; keys Atoll set keep Atoll's values, Atoll's domain is refused."""
    for key, value in extra.items():
        if reserved_key(key):
            raise TemplateConflictError(f"spec.template.{field}: {key!r} is under atoll.dev/, which belongs to Atoll")
        target.setdefault(key, value)


def _merge_container(container: dict[str, Any], template: PodTemplate) -> None:
    """Extra env (replacing Atoll's non-owned variables of the same name) and volume mounts."""
    if template.env:
        env = container.setdefault("env", [])
        for index, variable in enumerate(template.env):
            if reserved_env(variable.name):
                raise TemplateConflictError(f"spec.template.env[{index}].name: {variable.name} belongs to Atoll")
            env[:] = [item for item in env if item.get("name") != variable.name]
            env.append(variable.model_dump(by_alias=True, exclude_none=True, mode="json"))
    if template.volume_mounts:
        mounts = container.setdefault("volumeMounts", [])
        paths = {mount.get("mountPath") for mount in mounts}
        for index, mount in enumerate(template.volume_mounts):
            if mount.mount_path in paths:
                raise TemplateConflictError(
                    f"spec.template.volumeMounts[{index}].mountPath: Atoll mounts its own volume at {mount.mount_path}"
                )
            mounts.append(mount.model_dump(by_alias=True, exclude_none=True, mode="json"))
