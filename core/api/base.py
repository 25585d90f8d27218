"""The base of every spec model, and the one way a cross-field check names the field it refuses.

Pure data: never import torch or Kubernetes clients here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError


class SpecModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_assignment=True,
        frozen=False,
    )


def field_error(model: type[BaseModel], loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A validation error at `loc` (camelCase names, relative to `model`) for a model validator to raise.

    pydantic nests the locations of a ValidationError raised inside a validator, so a
    cross-field rule checked on a parent names the exact child field
    (`spec.partition.features`), like the CRD's CEL rule with its fieldPath does.
    """
    kind = PydanticCustomError("value_error", "{message}", {"message": message})
    return ValidationError.from_exception_data(model.__name__, [InitErrorDetails(type=kind, loc=loc, input=value)])
