"""An island's kubeconfig: cut down to one context with every file inlined, and turned into a client.

`atoll island add` stores the standalone kubeconfig in a Secret; the operator builds a
client from the Secret's text on every probe, so a rotated Secret is used at once. Credential
plugins (`exec`, `auth-provider`) are refused: the operator's pod cannot run them. Never log
or return a kubeconfig's content: errors name the field, not its value.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

from atoll.errors import BadInputError

# kubeconfig fields that name a file, and the field that carries the same content inline.
_CLUSTER_FILES = {"certificate-authority": "certificate-authority-data"}
_USER_FILES = {"client-certificate": "client-certificate-data", "client-key": "client-key-data"}


class KubeconfigError(BadInputError):
    """The kubeconfig cannot be used for an island; the message says which part and why, never a secret."""


def _named(document: dict[str, Any], section: str, name: str, source: str) -> dict[str, Any]:
    entries: list[Any] = document.get(section) or []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            found: dict[str, Any] = entry
            return found
    raise KubeconfigError(f"{source}: no entry {name!r} in {section}")


def _inline(entry: dict[str, Any], files: dict[str, str], base: Path, source: str) -> None:
    for field, data_field in files.items():
        if field not in entry:
            continue
        path = base / str(entry.pop(field))
        try:
            entry[data_field] = base64.b64encode(path.read_bytes()).decode()
        except OSError as error:
            raise KubeconfigError(f"{source}: cannot read {field} {path}: {error.strerror}") from None


def standalone(text: str, *, context: str | None = None, source: str = "kubeconfig", base: Path | None = None) -> str:
    """The kubeconfig of one context (the current one by default), files inlined, as YAML text.

    Relative file paths are resolved against `base` (the kubeconfig's directory).
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise KubeconfigError(f"{source}: not YAML") from None
    if not isinstance(document, dict):
        raise KubeconfigError(f"{source}: not a kubeconfig (expected a mapping with clusters, users, contexts)")
    name = context or document.get("current-context")
    if not name:
        raise KubeconfigError(f"{source}: no current-context; name one with --context")
    chosen = copy.deepcopy(_named(document, "contexts", str(name), source))
    details = chosen.get("context") or {}
    cluster = copy.deepcopy(_named(document, "clusters", str(details.get("cluster")), source))
    user = copy.deepcopy(_named(document, "users", str(details.get("user")), source))
    folder = base or Path()
    _inline(cluster.get("cluster") or {}, _CLUSTER_FILES, folder, source)
    credentials = user.get("user") or {}
    for plugin in ("exec", "auth-provider"):
        if plugin in credentials:
            raise KubeconfigError(
                f"{source}: user {user.get('name')!r} authenticates with an {plugin} plugin, which the operator"
                " cannot run; use a ServiceAccount token (see charts/atoll-island) or a client certificate"
            )
    _inline(credentials, _USER_FILES, folder, source)
    if "tokenFile" in credentials:
        token_path = folder / str(credentials.pop("tokenFile"))
        try:
            credentials["token"] = token_path.read_text().strip()
        except OSError as error:
            raise KubeconfigError(f"{source}: cannot read tokenFile {token_path}: {error.strerror}") from None
    if not (cluster.get("cluster") or {}).get("server"):
        raise KubeconfigError(f"{source}: cluster {cluster.get('name')!r} has no server")
    out = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [user],
        "contexts": [chosen],
        "current-context": chosen["name"],
    }
    return str(yaml.safe_dump(out, sort_keys=False))


def server_of(text: str) -> str:
    """The API server of a standalone kubeconfig as messages may show it: scheme://host[:port], no user info."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(str(yaml.safe_load(text)["clusters"][0]["cluster"]["server"]))
        port = f":{url.port}" if url.port else ""
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return "(unknown server)"
    return f"{url.scheme}://{url.hostname}{port}"


def client_for(text: str, *, retries: int | None = None) -> Any:
    """A `kubernetes.client.ApiClient` for a standalone kubeconfig's context.

    `retries`: how often urllib3 retries a failed connection (its default when None).
    """
    from kubernetes import client
    from kubernetes import config as kube_config_module

    kube_config: Any = kube_config_module  # untyped module
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise KubeconfigError("the island's kubeconfig is not YAML") from None
    if not isinstance(document, dict):
        raise KubeconfigError("the island's kubeconfig is not a mapping")
    configuration = client.Configuration()
    try:
        kube_config.load_kube_config_from_dict(document, client_configuration=configuration, persist_config=False)
    except (kube_config.ConfigException, KeyError, TypeError, ValueError) as error:
        raise KubeconfigError(f"the island's kubeconfig cannot be loaded ({type(error).__name__})") from None
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)
