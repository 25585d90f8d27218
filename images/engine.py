"""The container engine that builds Atoll's images and holds them: docker, podman or buildah,
whichever works here, tried in that order.

buildah keeps its images in a storage of Atoll's own (`~/.cache/atoll/containers`, overlay
where the kernel has it, else vfs), which is also where the test pod runtime looks for the
image of a pod. When no engine works and this is root on Debian, buildah is installed with
apt-get (`install_packages`). Nothing here pushes to a registry or touches another
program's containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EngineError(RuntimeError):
    """No container engine works here, or one of its commands failed (the message has its output)."""


def cache_root() -> Path:
    """Atoll's cache (ATOLL_CACHE, default ~/.cache/atoll): images, base root filesystems, storage."""
    return Path(os.environ.get("ATOLL_CACHE", Path.home() / ".cache" / "atoll")).expanduser()


def storage_driver() -> str:
    """overlay when this root can mount it (fast, no copies), else vfs; ATOLL_STORAGE_DRIVER overrides."""
    if driver := os.environ.get("ATOLL_STORAGE_DRIVER"):
        return driver
    filesystems = Path("/proc/filesystems")
    has_overlay = filesystems.exists() and "overlay" in filesystems.read_text().split()
    return "overlay" if has_overlay and os.geteuid() == 0 else "vfs"


def buildah_storage() -> tuple[str, ...]:
    """buildah's global flags for Atoll's storage: --root, --runroot (on /run: gone at reboot), --storage-driver."""
    root = cache_root() / "containers" / "storage"
    run_base = Path("/run/atoll")
    if os.geteuid() != 0:
        run_base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / "atoll"
    runroot = run_base / f"containers-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"
    return ("--root", str(root), "--runroot", str(runroot), "--storage-driver", storage_driver())


def install_packages(*packages: str) -> None:
    """apt-get install packages (as root on Debian/Ubuntu), once; EngineError saying what to do otherwise."""
    missing = [p for p in packages if shutil.which(p) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        names = " ".join(missing)
        raise EngineError(f"{names} not installed; install it (Debian: apt-get install {names})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for command in (["apt-get", "update", "-qq"], install):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=1800)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")


@dataclass(frozen=True)
class Engine:
    """One container engine: its name and the command prefix every call starts with."""

    name: str
    argv: tuple[str, ...]

    def run(self, *args: str, timeout: float = 3600, log: Path | None = None) -> str:
        """Run one engine command; its stdout, or EngineError with the output's tail."""
        command = [*self.argv, *args]
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as out:
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            if result.returncode != 0:
                tail = log.read_text(errors="replace")[-3000:]
                raise EngineError(f"{' '.join(command[:4])} … failed ({result.returncode}); {log}:\n{tail}")
            return ""
        captured = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if captured.returncode != 0:
            raise EngineError(f"{' '.join(command)} failed ({captured.returncode}):\n{captured.stderr[-3000:]}")
        return captured.stdout

    def image_id(self, ref: str) -> str | None:
        """The local image's ID, or None when it is not in this engine's storage."""
        if self.name == "buildah":
            args = ["inspect", "--type", "image", "--format", "{{.FromImageID}}", ref]
        else:
            args = ["image", "inspect", "--format", "{{.Id}}", ref]
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            return None
        return result.stdout.strip().removeprefix("sha256:") or None

    def image_size(self, ref: str) -> int:
        """Uncompressed size of the image's layers in bytes (buildah reports it to 3 digits)."""
        if self.name == "buildah":
            rows = json.loads(self.run("images", "--json", ref) or "[]")
            return _parse_size(rows[0]["size"]) if rows else 0
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref).strip())

    def build(
        self,
        *,
        containerfile: Path,
        context: Path,
        tags: list[str],
        build_args: dict[str, str],
        volumes: list[str],
        log: Path,
    ) -> None:
        """Build containerfile in context (layer cache on); volumes are bind mounts for RUN steps."""
        args = ["build", "-f", str(containerfile)]
        if self.name == "buildah":
            args += ["--layers", "--isolation", "chroot", "--pull=missing"]
        for tag in tags:
            args += ["-t", tag]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        if self.name != "docker":  # `docker build` has no build-time volumes
            for volume in volumes:
                args += ["-v", volume]
        self.run(*args, str(context), log=log)

    def save_oci(self, ref: str, path: Path, log: Path) -> None:
        """Write the image as an OCI archive (a tar of an OCI image layout) to path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        if self.name == "buildah":
            self.run("push", "--quiet", ref, f"oci-archive:{path}:{ref}", log=log)
        elif self.name == "podman":
            self.run("save", "--format", "oci-archive", "-o", str(path), ref, log=log)
        else:  # docker save writes an OCI image layout since Docker 25
            self.run("save", "-o", str(path), ref, log=log)

    def import_rootfs(self, tarball: Path, ref: str, env: dict[str, str], cmd: list[str], log: Path) -> None:
        """Make image ref from a root filesystem tarball (no parent image), with env and cmd."""
        changes = [f"ENV {key}={value}" for key, value in env.items()] + [f"CMD {json.dumps(cmd)}"]
        if self.name in ("docker", "podman"):
            self.run("import", *[f"--change={change}" for change in changes], str(tarball), ref, log=log)
            return
        container = self.run("from", "scratch").strip()
        try:
            self.run("add", container, str(tarball), "/", log=log)
            config = [f"--env={key}={value}" for key, value in env.items()]
            self.run("config", *config, f"--cmd={json.dumps(cmd)}", container, log=log)
            self.run("commit", "--quiet", container, ref, log=log)
        finally:
            self.run("rm", container)


def _parse_size(text: str) -> int:
    """'328 MB' (decimal units, as containers/storage prints sizes) → bytes."""
    number, _, unit = text.partition(" ")
    scale = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit or "B"]
    return int(float(number) * scale)


def _works(argv: list[str]) -> bool:
    try:
        return subprocess.run([*argv, "info"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine(*, install: bool = False, prefer: str | None = None) -> Engine:
    """docker, podman or buildah, the first that works (ATOLL_ENGINE or prefer picks one);
    with install, Debian's buildah is installed when none does."""
    choice = prefer or os.environ.get("ATOLL_ENGINE")
    names = [choice] if choice else ["docker", "podman", "buildah"]
    for name in names:
        argv = [name, *buildah_storage()] if name == "buildah" else [name]
        if shutil.which(name) is not None and _works(argv):
            return Engine(name, tuple(argv))
    if install and (choice in (None, "buildah")):
        install_packages("buildah")
        argv = ["buildah", *buildah_storage()]
        if _works(argv):
            return Engine("buildah", tuple(argv))
    raise EngineError(
        f"no container engine works here (tried {', '.join(names)}): install docker, podman or buildah "
        "(as root on Debian, `make images` installs buildah itself)"
    )


def stored(engine: Engine, kind: str) -> list[dict[str, Any]]:
    """buildah's images (kind "images") or working containers ("containers") as its storage records
    them, read without taking the storage lock: a lookup must not wait for a build holding it."""
    argv = list(engine.argv)
    root, driver = Path(argv[argv.index("--root") + 1]), argv[argv.index("--storage-driver") + 1]
    try:
        records: list[dict[str, Any]] = json.loads((root / f"{driver}-{kind}" / f"{kind}.json").read_text())
    except (OSError, ValueError):
        return []
    return records


def local_buildah() -> Engine | None:
    """buildah on Atoll's storage when it is installed and the storage exists (no install, no probe)."""
    if shutil.which("buildah") is None or not (cache_root() / "containers" / "storage").is_dir():
        return None
    return Engine("buildah", ("buildah", *buildah_storage()))
