"""Reading DDMRun manifests (YAML files) and spec.json documents with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from atoll.api.errors import SpecError, format_validation_error
from atoll.api.spec import DDMRunManifest, DDMRunSpec


def parse_manifest(document: Any, source: str) -> DDMRunManifest:
    """Validate one decoded YAML/JSON document as a DDMRun manifest."""
    if not isinstance(document, dict):
        raise SpecError(source, ["(root): expected a mapping with apiVersion, kind, metadata and spec"])
    try:
        return DDMRunManifest.model_validate(document)
    except ValidationError as error:
        raise SpecError(source, format_validation_error(error)) from None


def load_manifest(path: str | Path) -> DDMRunManifest:
    """Load the single DDMRun in a YAML file."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SpecError(source, [f"(file): cannot read: {error.strerror}"]) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError(source, [f"(yaml): {error}"]) from None
    runs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "DDMRun"]
    if len(runs) != 1:
        found = ", ".join(str(d.get("kind")) for d in documents if isinstance(d, dict)) or "nothing"
        raise SpecError(source, [f"(file): expected exactly one DDMRun, found {found}"])
    return parse_manifest(runs[0], source)


def check_for_kubernetes(manifest: DDMRunManifest, source: str) -> None:
    """The checks only a run on Kubernetes needs (the CRD's Kubernetes-only CEL rules), so
    `atoll run FILE` refuses the file before anything is applied; SpecError naming the field."""
    spec = manifest.spec
    if spec.storage.uri.startswith("s3://") and not spec.storage.secret_ref:
        raise SpecError(
            source,
            [
                "spec.storage.secretRef: a Secret with accessKey, secretKey and endpoint is required for an"
                " s3:// storage.uri (stage pods get store credentials only from a Secret)"
            ],
        )


def load_spec_json(text: str | bytes, source: str = "spec.json") -> DDMRunSpec:
    """Validate the spec.json a run stores next to its data (the spec alone, camelCase)."""
    try:
        return DDMRunSpec.model_validate(json.loads(text))
    except json.JSONDecodeError as error:
        raise SpecError(source, [f"(json): {error}"]) from None
    except ValidationError as error:
        raise SpecError(source, format_validation_error(error, "spec")) from None


def dump_spec_json(spec: DDMRunSpec) -> str:
    """The canonical spec.json text (camelCase, defaults included)."""
    return spec.model_dump_json(by_alias=True, indent=2)
