"""Starts one container process from an image's root filesystem, as a minimal OCI runtime would:
`python chroot_exec.py SPEC.json` (as root) enters a private mount namespace, mounts /proc,
a small /dev, /etc/hosts and /etc/resolv.conf and the pod's volumes into the root
filesystem, makes the root read-only when asked, chroots, drops to the container's user
and execs the command, so the container's pid is this process's pid.

Standard library only (it runs before anything of the test environment is importable).
Nothing it mounts is visible outside its namespace; it never changes the host's mounts.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
EXIT_START_ERROR = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def _inside(root: Path, path: str) -> Path:
    """path resolved inside root the way the container will see it: a symlink (the image's
    /var/run -> /run, say) is followed within root, never out of it onto the host."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved = root
    for _ in range(255):
        if not parts:
            return resolved
        part = parts.pop(0)
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            target = str(candidate.readlink())
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            if target.startswith("/"):
                resolved = root
            continue
        resolved = candidate
    raise OSError(f"too many symbolic links resolving {path} in {root}")


def _mountpoint(target: Path, *, file: bool) -> None:
    """Create what a mount needs at target (a file for a file, else a directory)."""
    if file:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)


def bind(source: str, target: Path, *, read_only: bool, recursive: bool = True) -> None:
    _mountpoint(target, file=not Path(source).is_dir())
    mount(source, str(target), None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        mount(None, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def system_mounts(root: Path, spec: dict[str, Any]) -> None:
    """/proc, a /dev with the usual character devices and a private /dev/shm, /etc/hosts, resolv.conf."""
    proc = _inside(root, "/proc")
    _mountpoint(proc, file=False)
    mount("proc", str(proc), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = _inside(root, "/dev")
    _mountpoint(dev, file=False)
    mount("tmpfs", str(dev), "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in DEVICES:
        bind(f"/dev/{name}", dev / name, read_only=False, recursive=False)
    _mountpoint(dev / "shm", file=False)
    mount("shm", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        (dev / name).symlink_to(target)
    (dev / "stderr").symlink_to("/proc/self/fd/2")
    for host_file, path in ((spec["hosts"], "/etc/hosts"), ("/etc/resolv.conf", "/etc/resolv.conf")):
        if Path(host_file).exists():
            bind(host_file, _inside(root, path), read_only=True, recursive=False)


def volume_mounts(root: Path, mounts: list[dict[str, Any]]) -> None:
    for item in mounts:
        target = _inside(root, item["target"])
        if item["source"] is None:  # emptyDir with medium Memory
            _mountpoint(target, file=False)
            size = f",size={item['size_bytes']}" if item.get("size_bytes") else ""
            mount("tmpfs", str(target), "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777{size}")
        else:
            bind(item["source"], target, read_only=bool(item["read_only"]))


def enter(spec: dict[str, Any]) -> None:
    """Everything up to the exec; OSError when a step fails."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    root = Path(spec["rootfs"])
    mount(str(root), str(root), None, MS_BIND | MS_REC)
    system_mounts(root, spec)
    volume_mounts(root, spec["mounts"])
    _mountpoint(_inside(root, spec["cwd"]), file=False)
    if spec["readOnlyRoot"]:
        mount(None, str(root), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chroot(root)
    os.chdir(spec["cwd"])
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    if spec["noNewPrivileges"]:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    # A change of credentials clears the parent-death signal: set it again (the runtime's death kills us).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        enter(spec)
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as error:
        print(f"atoll-pod-runtime: cannot start the container: {error}", file=sys.stderr, flush=True)
    return EXIT_START_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))
