"""CEL rules for the spec fields that end up in pods (tolerations, nodeSelector, spec.template)
and for spec.weights: the API server's half of the checks atoll.api.placement,
atoll.api.template and atoll.api.weights make in pydantic, so `kubectl apply` refuses what
`atoll run` refuses, with the same field named. Pure: never talks to a cluster.
"""

from __future__ import annotations

from atoll.api.names import QUALIFIED_NAME_PATTERN
from atoll.api.template import (
    MAX_ITEMS,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    RESERVED_KEY_DOMAIN,
    RESERVED_MOUNT_PATHS,
    RESERVED_VOLUME_PREFIX,
    RESERVED_VOLUMES,
    VOLUME_SOURCES,
)
from atoll.api.weights import PRETRAINED
from atoll.operator.crd.cel import Rule, cel_list, cel_string

_QUALIFIED = cel_string(QUALIFIED_NAME_PATTERN)
_ESCAPED_DOMAIN = RESERVED_KEY_DOMAIN.replace(".", "\\.")
_RESERVED_KEY = cel_string(rf"^([a-z0-9.-]+\.)?{_ESCAPED_DOMAIN}/")
_DOT_SEGMENT = cel_string(r"(^|/)\.\.?(/|$)")
_DOT_DOT_SEGMENT = cel_string(r"(^|/)\.\.(/|$)")


def _qualified_keys(what: str, *, reserved: bool) -> list[Rule]:
    """Every key of a map is a qualified name ([prefix/]name, prefix ≤ 253), optionally not Atoll's."""
    rules = [
        Rule(
            f"self.all(k, k.size() <= 317 && k.matches({_QUALIFIED}) && (!k.contains('/') || k.indexOf('/') <= 253))",
            f"{what} keys must be qualified names: [prefix/]name, the prefix a DNS subdomain of at most 253"
            " characters, the name at most 63 alphanumerics, '-', '_' or '.' starting and ending alphanumeric",
        )
    ]
    if reserved:
        rules.append(
            Rule(
                f"self.all(k, !k.matches({_RESERVED_KEY}))", f"{what} keys under {RESERVED_KEY_DOMAIN}/ belong to Atoll"
            )
        )
    return rules


def _one_of(fields: tuple[str, ...]) -> str:
    return " + ".join(f"(has(self.{field}) ? 1 : 0)" for field in fields) + " == 1"


def _pretrained(section: str, field: str, choices: frozenset[str]) -> Rule:
    return Rule(
        "(has(self.weights) && self.weights.source != 'none')"
        f" || !(self.{section}.{field} in {cel_list(sorted(choices))})",
        f"{section}.{field} loads pretrained weights but spec.weights.source is none: set spec.weights"
        " (hub, store or volume) or choose an offline encoder",
        f".{section}.{field}",
    )


_RESERVED_ENV_RULE = " || ".join(
    [
        f"self.name in {cel_list(RESERVED_ENV)}",
        *(f"self.name.startsWith({cel_string(p)})" for p in RESERVED_ENV_PREFIXES),
    ]
)
_RESERVED_MOUNTS = cel_list([*RESERVED_MOUNT_PATHS, *(f"{path}/" for path in RESERVED_MOUNT_PATHS)])
_RESERVED_VOLUME_RULE = (
    f"self.name in {cel_list(RESERVED_VOLUMES)} || self.name.startsWith({cel_string(RESERVED_VOLUME_PREFIX)})"
)

POD_RULES: dict[str, list[Rule]] = {
    "": [_pretrained(section, field, choices) for (section, field), choices in PRETRAINED.items()],
    "weights": [
        Rule(
            "self.source != 'store' || has(self.uri)",
            "weights.uri is required when source is store",
            ".uri",
            "FieldValueRequired",
        ),
        Rule("!has(self.uri) || self.source == 'store'", "weights.uri applies to source store only", ".uri"),
        Rule(
            "!has(self.path) || self.source in ['hub', 'volume']",
            "weights.path applies to source hub or volume only",
            ".path",
        ),
    ],
    "placement.nodeSelector": _qualified_keys("placement.nodeSelector", reserved=False),
    "placement.tolerations[]": [
        Rule(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "must be empty when operator is Exists",
            ".value",
        ),
        Rule(
            "self.operator != 'Equal' || (has(self.key) && self.key != '')",
            "operator must be Exists when key is empty (Exists with no key tolerates every taint)",
            ".operator",
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds is only allowed with effect NoExecute",
            ".tolerationSeconds",
        ),
        Rule(
            "!has(self.key) || !self.key.contains('/') || self.key.indexOf('/') <= 253",
            "the key's prefix must be no more than 253 characters",
            ".key",
        ),
    ],
    "template": [
        Rule(
            "!has(self.volumeMounts)"
            " || self.volumeMounts.all(m, has(self.volumes) && self.volumes.exists(v, v.name == m.name))",
            "every template.volumeMounts[].name must name a volume in template.volumes",
            ".volumeMounts",
        )
    ],
    "template.labels": _qualified_keys("template.labels", reserved=True),
    "template.annotations": _qualified_keys("template.annotations", reserved=True),
    "template.env[]": [
        Rule(
            f"!({_RESERVED_ENV_RULE})",
            f"{', '.join(RESERVED_ENV)}, {'*, '.join(RESERVED_ENV_PREFIXES)}* belong to Atoll"
            " (store credentials come from spec.storage.secretRef)",
            ".name",
        ),
        Rule("!has(self.value) || !has(self.valueFrom)", "value and valueFrom are mutually exclusive", ".valueFrom"),
    ],
    "template.env[].valueFrom": [
        Rule(
            _one_of(("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef")),
            "set exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef",
        )
    ],
    "template.volumes[]": [
        Rule(
            f"!({_RESERVED_VOLUME_RULE})",
            f"volume names {', '.join(RESERVED_VOLUMES)} and {RESERVED_VOLUME_PREFIX}* belong to Atoll",
            ".name",
        ),
        Rule(_one_of(VOLUME_SOURCES), f"set exactly one volume source ({', '.join(VOLUME_SOURCES)})"),
    ],
    "template.volumeMounts[]": [
        Rule(
            f"!(self.mountPath in {_RESERVED_MOUNTS})",
            f"{', '.join(RESERVED_MOUNT_PATHS)} are where Atoll mounts its own volumes",
            ".mountPath",
        ),
        Rule(f"!self.mountPath.matches({_DOT_SEGMENT})", "mountPath must not have '.' or '..' segments", ".mountPath"),
        Rule(
            f"!has(self.subPath) || !self.subPath.matches({_DOT_DOT_SEGMENT})",
            "subPath must not have '..' segments",
            ".subPath",
        ),
    ],
}

# Bounds the API server needs to estimate the cost of the rules above.
POD_LIMITS: dict[str, dict[str, int]] = {
    "placement.nodeSelector": {"maxProperties": MAX_ITEMS},
    "template.labels": {"maxProperties": MAX_ITEMS},
    "template.annotations": {"maxProperties": MAX_ITEMS},
    "template.volumes[].name": {"maxLength": 63},
}

# Lists whose items are unique by a key (the API server refuses duplicates, naming the item).
POD_LIST_MAPS: dict[str, list[str]] = {
    "template.env": ["name"],
    "template.volumes": ["name"],
    "template.volumeMounts": ["mountPath"],
    "template.imagePullSecrets": ["name"],
}
