"""Turns pydantic validation errors into one clear message per bad field path."""

from __future__ import annotations

from pydantic import ValidationError

from atoll.errors import BadInputError


class SpecError(BadInputError, ValueError):
    """A DDMRun (or another atoll object) that is not valid.

    `problems` lists `path: message` lines, paths in camelCase.
    """

    def __init__(self, source: str, problems: list[str], *, kind: str = "DDMRun") -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source} is not a valid {kind}:\n" + "\n".join(f"  {p}" for p in problems))


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """`spec.expert.learningRate: Input should be greater than 0` lines for each error."""
    lines: list[str] = []
    for item in error.errors():
        path = ".".join(_segment(part) for part in item["loc"] if part not in ("function-after",))
        path = path.replace(".[", "[")
        where = ".".join(p for p in (prefix, path) if p) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "literal_error" and "expected" in item.get("ctx", {}):
            message = f"must be one of {item['ctx']['expected']}"
        lines.append(f"{where}: {message}")
    return lines


def _segment(part: str | int) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)
