"""CEL rules (x-kubernetes-validations) as data, and quoting of Go regexes into CEL strings.

Pure: never talks to a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One CEL rule (x-kubernetes-validations) on the schema node it is attached to."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str = "FieldValueInvalid"

    def render(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message, "reason": self.reason}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


IMMUTABLE = Rule("self == oldSelf", "is immutable once the run exists", reason="FieldValueForbidden")


def cel_string(text: str) -> str:
    """`text` as a single-quoted CEL string literal (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_list(items: tuple[str, ...] | list[str]) -> str:
    """A CEL list literal of strings."""
    return "[" + ", ".join(cel_string(item) for item in items) + "]"
