"""Kubernetes' rules for names, label keys and values, and environment variable names.

The same rules the API server applies to a Pod (apimachinery's IsQualifiedName,
IsValidLabelValue, IsDNS1123Label, IsEnvVarName), checked when a DDMRun is applied,
so a bad toleration key or nodeSelector value is refused with the DDMRun's field named
instead of failing every pod the operator creates later. Each rule is one regex (for the
CRD's `pattern`) and one function that says what is wrong (for the pydantic models).
Pure: no I/O.
"""

from __future__ import annotations

import re

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
QUALIFIED_NAME_PATTERN = rf"^({DNS_SUBDOMAIN}/)?{_NAME_PART}$"
"""A label or annotation key, a taint key: [prefix/]name (prefix ≤ 253, name ≤ 63 characters)."""
QUALIFIED_NAME_MAX = 253 + 1 + 63
LABEL_VALUE_PATTERN = rf"^({_NAME_PART})?$"
"""A label value, a toleration value: empty, or ≤ 63 letters, digits, '-', '_', '.' starting and ending alphanumeric."""
LABEL_VALUE_MAX = 63
DNS_LABEL_PATTERN = rf"^{DNS_LABEL}$"
"""A volume name, a Secret or PriorityClass name segment: ≤ 63 lower-case letters, digits and '-'."""
DNS_SUBDOMAIN_PATTERN = rf"^{DNS_SUBDOMAIN}$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
"""An environment variable name as Kubernetes accepts it."""


def qualified_name_problem(key: str) -> str | None:  # noqa: PLR0911 - one return per rule, as apimachinery
    """What makes `key` an invalid qualified name ([prefix/]name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "prefix part must be non-empty"
    if prefix:
        if len(prefix) > 253:
            return "prefix part must be no more than 253 characters"
        if not re.fullmatch(DNS_SUBDOMAIN, prefix):
            return "prefix part must be a lower-case DNS subdomain (e.g. 'example.com')"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not re.fullmatch(_NAME_PART, name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start"
            " and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """What makes `value` an invalid label value, or None."""
    if len(value) > LABEL_VALUE_MAX:
        return f"must be no more than {LABEL_VALUE_MAX} characters"
    if not re.fullmatch(LABEL_VALUE_PATTERN, value):
        return (
            "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must"
            " start and end with an alphanumeric character"
        )
    return None


def dns_label_problem(name: str) -> str | None:
    """What makes `name` an invalid DNS-1123 label, or None."""
    if len(name) > 63:
        return "must be no more than 63 characters"
    if not re.fullmatch(DNS_LABEL_PATTERN, name):
        return "must consist of lower-case alphanumeric characters or '-', and start and end with an alphanumeric"
    return None


def env_name_problem(name: str) -> str | None:
    """What makes `name` an invalid environment variable name, or None."""
    if not re.fullmatch(ENV_NAME_PATTERN, name):
        return "must consist of letters, digits, '_', '-' or '.', and must not start with a digit"
    return None
