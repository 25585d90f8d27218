"""Runs a pod's container from its image when the image is in Atoll's local container storage
(buildah's, see images/engine.py): a buildah working container gives the root filesystem,
the pod's volumes are made on this machine (emptyDir, projected ServiceAccount tokens from
the TokenRequest API with ca.crt and namespace, Secrets, ConfigMaps, downward API,
hostPath), and tests/env/chroot_exec.py starts the process in them as the container's
user. A pod whose image is not there is not this module's: it runs on the host as before.

Only as root, with buildah installed; every working container it makes is named after its
runtime and removed when the container ends (or when a runtime of the same work directory
starts again).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from images.engine import Engine, local_buildah, stored
from tests.env import containers, pods
from tests.env.containers import ImageConfig, Mount
from tests.env.pods import ContainerConfigError

CHROOT_EXEC = Path(__file__).with_name("chroot_exec.py")
REFRESH_S = 1.0
"""A missed image is looked up again in the storage at most this often."""
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")
"""Host settings image pods get too (no network here); never host paths such as TMPDIR or HF_HOME."""
TOKEN_SECONDS = 3607


def _local_engine() -> Engine | None:
    """buildah on Atoll's storage, as root only (an image container needs chroot and mounts)."""
    return local_buildah() if os.geteuid() == 0 else None


@dataclass(frozen=True)
class Launch:
    """How to start one image container: the command for Popen, and what to undo when it ends."""

    argv: list[str]
    container_argv: list[str]
    image: str
    container: str
    """The buildah working container holding the root filesystem."""
    rootfs: str
    cleanup: Callable[[], None]


class ImagePods:
    """The image side of the pod process runtime: lookups, working containers, volumes."""

    def __init__(self, core: Any, api_server: str, workdir: Path, engine: Engine | None = None) -> None:
        self.core = core
        parts = urlsplit(api_server)
        self.api_host, self.api_port = parts.hostname or "127.0.0.1", parts.port or 443
        self.workdir = workdir
        self.engine = engine if engine is not None else _local_engine()
        self.prefix = f"atoll-rt-{hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]}"
        self._names: dict[str, str] = {}
        self._listed_at = -REFRESH_S
        self._configs: dict[str, ImageConfig] = {}
        self._remove_leftovers()

    # --- images ---------------------------------------------------------------------

    def lookup(self, image: str | None) -> str | None:
        """The ID of the pod's image when it is in local storage, else None (run on the host).
        Without an engine yet, one is looked for again: on a fresh machine the runtime starts
        before the first image build installs buildah and makes the storage."""
        if not image:
            return None
        if self.engine is None:
            self.engine = _local_engine()
            if self.engine is None:
                return None
        found = self._find(image)
        if found is None and time.monotonic() - self._listed_at >= REFRESH_S:
            self._refresh()
            found = self._find(image)
        return found

    def _find(self, image: str) -> str | None:
        name = image if ("@" in image or ":" in image.rsplit("/", 1)[-1]) else f"{image}:latest"
        first = name.split("/", 1)[0]
        qualified = "." in first or ":" in first or first == "localhost"
        candidates = [name] if qualified else [f"localhost/{name}", f"docker.io/library/{name}", f"docker.io/{name}"]
        for candidate in candidates:
            if candidate in self._names:
                return self._names[candidate]
        return self._names.get(image.removeprefix("sha256:")[:12])

    def _refresh(self) -> None:
        assert self.engine is not None
        self._listed_at = time.monotonic()
        rows = stored(self.engine, "images")
        self._names = {str(row["id"])[:12]: str(row["id"]) for row in rows}
        for row in rows:
            self._names.update({name: str(row["id"]) for name in row.get("names") or []})

    def config(self, image_id: str) -> ImageConfig:
        if image_id not in self._configs:
            assert self.engine is not None
            info = json.loads(self.engine.run("inspect", "--type", "image", image_id, timeout=60))
            self._configs[image_id] = ImageConfig.from_oci(info["OCIv1"].get("config") or {})
        return self._configs[image_id]

    # --- one container ----------------------------------------------------------------

    def prepare(self, pod: dict[str, Any], image_id: str, resolved: Mapping[str, str], pod_dir: Path) -> Launch:
        """Root filesystem, volumes and the start spec of the pod's first container (ContainerConfigError)."""
        assert self.engine is not None
        container = pod["spec"]["containers"][0]
        image = self.config(image_id)
        env = containers.environment(
            image, {**{k: os.environ[k] for k in OFFLINE_ENV if k in os.environ}, **resolved},
            hostname=pod["metadata"]["name"], api_host=self.api_host, api_port=self.api_port,
        )  # fmt: skip
        argv = containers.argv(container, image, env)
        mounts = [self._mount(pod, container, item, pod_dir) for item in container.get("volumeMounts") or []]
        name = f"{self.prefix}-{pod['metadata']['uid'][:8]}-{time.monotonic_ns() % 10**9}"
        self.engine.run("from", "--pull=never", "--quiet", "--name", name, image_id, timeout=600)
        try:
            rootfs = self.engine.run("mount", name, timeout=120).strip()
            passwd = Path(rootfs, "etc", "passwd")
            user = containers.identity(pod, container, image, passwd.read_text() if passwd.exists() else "")
        except Exception:
            self._remove(name)
            raise
        hosts = pod_dir / "etc-hosts"
        hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.0.1\t{pod['metadata']['name']}\n")
        spec = {
            "rootfs": rootfs,
            "argv": argv,
            "env": env,
            "cwd": containers.working_dir(container, image),
            "uid": user.uid,
            "gid": user.gid,
            "groups": list(user.groups),
            "mounts": [vars(m) for m in mounts],
            "readOnlyRoot": containers.read_only_root(container),
            "noNewPrivileges": containers.no_new_privileges(container),
            "hosts": str(hosts),
        }
        spec_path = pod_dir / "container.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        return Launch(
            argv=[sys.executable, "-I", str(CHROOT_EXEC), str(spec_path)],
            container_argv=argv,
            image=image_id,
            container=name,
            rootfs=rootfs,
            cleanup=lambda: self._remove(name),
        )

    def _remove(self, name: str) -> None:
        assert self.engine is not None
        subprocess.run([*self.engine.argv, "rm", name], capture_output=True, check=False, timeout=300)

    def _remove_leftovers(self) -> None:
        """Working containers of an earlier runtime of this work directory (killed before it cleaned up)."""
        if self.engine is None:
            return
        for row in stored(self.engine, "containers"):
            for name in row.get("names") or []:
                if str(name).startswith(f"{self.prefix}-"):
                    self._remove(str(name))

    # --- volumes ----------------------------------------------------------------------

    def _mount(
        self, pod: dict[str, Any], container: Mapping[str, Any], item: Mapping[str, Any], pod_dir: Path
    ) -> Mount:
        kind, source = containers.volume_of(pod, item["name"])
        read_only = bool(item.get("readOnly"))
        if kind == "emptyDir" and source.get("medium") == "Memory":
            from kubernetes.utils import parse_quantity

            limit = source.get("sizeLimit")
            size = int(parse_quantity(str(limit))) if limit else None
            return Mount(item["mountPath"], None, read_only, size)
        if kind == "hostPath":
            host = Path(source["path"])
        else:
            host = pod_dir / "volumes" / item["name"]
            if kind == "emptyDir":
                host.mkdir(parents=True, exist_ok=True)
                host.chmod(0o777)  # the kubelet makes emptyDirs world-writable
            else:
                self._materialize(pod, container, kind, source, host)
                read_only = True  # Secret, ConfigMap, downward API and projected volumes are always read-only
        if item.get("subPath"):
            host = host / str(item["subPath"])
            if not host.exists():
                host.mkdir(parents=True)
        return Mount(item["mountPath"], str(host), read_only)

    def _materialize(
        self, pod: dict[str, Any], container: Mapping[str, Any], kind: str, source: Mapping[str, Any], host: Path
    ) -> None:
        """Write the files of a Secret, ConfigMap, downward API or projected volume under host."""
        host.mkdir(parents=True, exist_ok=True)
        default_mode = int(source.get("defaultMode", 0o644))
        sources = source.get("sources") or [] if kind == "projected" else [{kind: source}]
        for entry in sources:
            for name, content, mode in self._files(pod, container, entry):
                path = host / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                path.chmod(mode if mode is not None else default_mode)

    def _files(
        self, pod: dict[str, Any], container: Mapping[str, Any], entry: Mapping[str, Any]
    ) -> list[tuple[str, bytes, int | None]]:
        """(path, content, mode) of each file one volume source gives."""
        namespace = pod["metadata"]["namespace"]
        if (token := entry.get("serviceAccountToken")) is not None:
            return [(token.get("path", "token"), self._token(pod, token).encode(), None)]
        if (ref := entry.get("secret") or entry.get("configMap")) is not None:
            secret = "secret" in entry
            name = ref.get("secretName") or ref.get("name")
            data = self._read(namespace, name, secret=secret)
            if data is None:
                if ref.get("optional"):
                    return []
                raise ContainerConfigError(f'{"secret" if secret else "configmap"} "{name}" not found')
            items = ref.get("items") or [{"key": key, "path": key} for key in data]
            return [(i["path"], data[i["key"]], i.get("mode")) for i in items if i["key"] in data]
        if (downward := entry.get("downwardAPI")) is not None:
            files: list[tuple[str, bytes, int | None]] = []
            for item in downward.get("items") or []:
                if "fieldRef" in item:
                    value = pods.field_value(pod, item["fieldRef"]["fieldPath"])
                else:
                    value = pods.resource_value(container, item["resourceFieldRef"])
                files.append((item["path"], value.encode(), item.get("mode")))
            return files
        raise ContainerConfigError(f"projected volume source {sorted(entry)} is not supported by this runtime")

    def _read(self, namespace: str, name: str, *, secret: bool) -> dict[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        reader = self.core.read_namespaced_secret if secret else self.core.read_namespaced_config_map
        try:
            obj = json.loads(reader(name, namespace, _preload_content=False, _request_timeout=10).data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        if secret:
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _token(self, pod: dict[str, Any], token: Mapping[str, Any]) -> str:
        """A token of the pod's ServiceAccount bound to the pod, from the TokenRequest API."""
        meta = pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": int(token.get("expirationSeconds") or TOKEN_SECONDS),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if token.get("audience"):
            spec["audiences"] = [token["audience"]]
        account = pod["spec"].get("serviceAccountName") or "default"
        response = self.core.create_namespaced_service_account_token(
            account, meta["namespace"], {"spec": spec}, _preload_content=False, _request_timeout=10
        )
        return str(json.loads(response.data)["status"]["token"])
