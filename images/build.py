"""`make images` / `make image-operator`: build images/<name>/Containerfile and write the OCI
archives build/images/atoll-operator.oci.tar and build/images/atoll-trainer.oci.tar.

BASE_IMAGE is the public Python slim image when it is already local or a registry answers;
where none does, a Debian bookworm root filesystem made by mmdebstrap from Debian's own
packages (python3.11) becomes the local base `localhost/atoll-base:bookworm-<recipe>`. Each
build is keyed by its inputs (Containerfile, sources, uv.lock, base image): an unchanged key
reuses the image and its archive from ~/.cache/atoll/images, so a warm `make test` builds
nothing. Never pushes to a registry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from images.engine import Engine, EngineError, cache_root, find_engine, install_packages

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "docker.io/library/python:3.11-slim"
"""The Containerfiles' BASE_IMAGE default; Debian's python3.11 base replaces it offline."""
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_BASE = {
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    # essential: no apt in a runtime image; python3-venv lets the build stage bootstrap uv;
    # libstdc++6 is what torch's wheels need of the system (apt brings it in a minbase).
    "variant": "essential",
    "packages": ["python3", "python3-venv", "ca-certificates", "libstdc++6"],
    "hooks": "/usr/share/mmdebstrap/hooks/merged-usr",
    "dpkg": [
        "path-exclude=/usr/share/doc/*",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/doc/*/copyright",
    ],
}
"""The mmdebstrap recipe of the offline base; its hash names the base image and its cache."""
SOURCES = ("pyproject.toml", "uv.lock", "setup.py", "README.md", ".dockerignore", "core", "operator", "trainer")
"""What the build context holds (see .dockerignore): every byte of it is in the inputs key."""


@dataclass(frozen=True)
class Image:
    """One image Atoll ships."""

    key: str
    """operator or trainer."""

    @property
    def name(self) -> str:
        return f"atoll-{self.key}"

    @property
    def containerfile(self) -> Path:
        return REPO / "images" / self.key / "Containerfile"


IMAGES = {key: Image(key) for key in ("operator", "trainer")}


@dataclass(frozen=True)
class Built:
    """What one `build` produced."""

    ref: str
    """The content-addressed reference, localhost/atoll-<key>:inputs-<hash>."""
    size: int
    archive: Path
    seconds: float
    cached: bool


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def registry_reachable(host: str = "registry-1.docker.io", timeout: float = 5.0) -> bool:
    """Whether the public registry answers on 443 (no DNS or no route here: it does not)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def debian_base(engine: Engine, log: Path) -> str:
    """The offline base image, made once per recipe with mmdebstrap and imported into the engine."""
    recipe = hashlib.sha256(json.dumps(DEBIAN_BASE, sort_keys=True).encode()).hexdigest()[:12]
    ref = f"localhost/atoll-base:{DEBIAN_BASE['suite']}-{recipe}"
    if engine.image_id(ref):
        return ref
    tarball = cache_root() / "images" / f"base-{DEBIAN_BASE['suite']}-{recipe}.tar"
    if not tarball.exists():
        install_packages("mmdebstrap")
        partial = tarball.with_suffix(".partial.tar")
        command = [
            "mmdebstrap", f"--variant={DEBIAN_BASE['variant']}", f"--include={','.join(DEBIAN_BASE['packages'])}",
            f"--hook-dir={DEBIAN_BASE['hooks']}", *[f"--dpkgopt={option}" for option in DEBIAN_BASE["dpkg"]],
            str(DEBIAN_BASE["suite"]), str(partial), str(DEBIAN_BASE["mirror"]),
        ]  # fmt: skip
        print(f"making the base root filesystem ({DEBIAN_BASE['suite']}, python3) with mmdebstrap", flush=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=3600)
        if result.returncode != 0:
            raise EngineError(f"mmdebstrap failed ({result.returncode}); see {log}")
        partial.rename(tarball)
    engine.import_rootfs(tarball, ref, {"PATH": BASE_PATH, "LANG": "C.UTF-8"}, ["python3"], log)
    return ref


def base_image(engine: Engine, choice: str, log: Path) -> str:
    """auto: the public slim image when it is local or pullable, else the Debian base; debian; or a reference."""
    if choice == "debian":
        return debian_base(engine, log)
    if choice != "auto":
        return choice
    if engine.image_id(DEFAULT_BASE) or registry_reachable():
        return DEFAULT_BASE
    return debian_base(engine, log)


def inputs_key(image: Image, base_id: str) -> str:
    """sha256 over the Containerfile, every file of the build context and the base image's ID."""
    digest = hashlib.sha256(f"{image.key}\0{base_id}\0".encode())
    digest.update(image.containerfile.read_bytes())
    for name in SOURCES:
        path = REPO / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(f"\0{file.relative_to(REPO)}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def build_volumes() -> list[str]:
    """Bind mounts for the build's RUN steps: this machine's uv cache (nothing downloaded twice)
    and the CA bundle its pip trusts over the build's system bundle (a TLS-inspecting proxy)."""
    volumes = []
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    uv_cache = Path(os.environ.get("UV_CACHE_DIR") or cache_home / "uv")
    if uv_cache.is_dir():
        volumes.append(f"{uv_cache.resolve()}:/root/.cache/uv")
    for variable in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(variable)
        if path and Path(path).is_file():
            volumes.append(f"{Path(path).resolve()}:/etc/ssl/certs/ca-certificates.crt:ro")
            break
    return volumes


def build(image: Image, *, engine: Engine, base: str = "auto", out: Path | None = None, force: bool = False) -> Built:
    """Build image (or reuse the build of the same inputs) and write its OCI archive."""
    started = time.monotonic()
    logs = cache_root() / "images" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base_ref = base_image(engine, base, logs / "base.log")
    key = inputs_key(image, engine.image_id(base_ref) or base_ref)[:16]
    ref = f"localhost/{image.name}:inputs-{key}"
    archive = cache_root() / "images" / f"{image.name}-{key}.oci.tar"
    cached = not force and archive.exists() and engine.image_id(ref) is not None
    if not cached:
        log = logs / f"{image.name}-{key}.log"
        log.unlink(missing_ok=True)
        print(f"building {image.name} with {engine.name} on {base_ref} (log: {log})", flush=True)
        tags = [ref, f"localhost/{image.name}:{version()}"]
        engine.build(
            containerfile=image.containerfile, context=REPO, tags=tags,
            build_args={"BASE_IMAGE": base_ref}, volumes=build_volumes(), log=log,
        )  # fmt: skip
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")
        engine.save_oci(ref, partial, log)
        partial.replace(archive)  # atomic: a concurrent build of the same inputs never sees half a file
        _prune(engine, image, keep=archive)
    if out is not None:
        target = out / f"{image.name}.oci.tar"
        out.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(archive, target)
        except OSError:
            shutil.copy2(archive, target)
    return Built(ref, engine.image_size(ref), archive, time.monotonic() - started, cached)


def _prune(engine: Engine, image: Image, *, keep: Path) -> None:
    """Drop the archives and content tags of this image's older builds (shared layers stay)."""
    for old in (cache_root() / "images").glob(f"{image.name}-*.oci.tar"):
        if old == keep:
            continue
        old.unlink(missing_ok=True)
        key = old.name.removeprefix(f"{image.name}-").removesuffix(".oci.tar")
        subprocess.run([*engine.argv, "rmi", f"localhost/{image.name}:inputs-{key}"], capture_output=True, check=False)


def ensure(key: str, *, base: str = "auto") -> str:
    """The image `key` built from the current sources (cached): its content-addressed reference."""
    return build(IMAGES[key], engine=find_engine(install=True), base=base).ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__)
    parser.add_argument("images", nargs="+", choices=sorted(IMAGES), help="which images to build")
    parser.add_argument("--base", default=os.environ.get("BASE_IMAGE") or "auto", help="auto, debian or an image")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "images", help="where the OCI archives go")
    parser.add_argument("--force", action="store_true", help="build even when the inputs are unchanged")
    args = parser.parse_args(argv)
    try:
        engine = find_engine(install=True)
        for key in args.images:
            done = build(IMAGES[key], engine=engine, base=args.base, out=args.out, force=args.force)
            how = "unchanged, reused" if done.cached else f"built in {done.seconds:.0f} s"
            archive = args.out / f"{IMAGES[key].name}.oci.tar"
            print(
                f"{IMAGES[key].name}: {done.ref} ({how}), {done.size / 1e6:.0f} MB uncompressed; "
                f"{archive} {archive.stat().st_size / 1e6:.0f} MB",
                flush=True,
            )
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
