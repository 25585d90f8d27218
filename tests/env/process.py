"""Small process helpers shared by the test environment: free loopback ports, waiting for
an HTTP endpoint, and stopping a whole process group (SIGTERM, then SIGKILL).

Server ports are chosen outside the kernel's ephemeral range: a port from that range
(what bind(0) returns) can be taken by any outgoing connection or any other bind(0) on the
machine while its server is down for a restart, and the server then cannot come back.

Every server the environment starts runs in its own process group so that stopping it
never leaves a child behind; nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_RANDOM = random.SystemRandom()  # never the seeded `random`: concurrent test sessions must not pick alike


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections and bind(0) (Linux's default 32768-60999)."""
    try:
        low, high = (int(value) for value in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as Go servers bind: TIME_WAIT is no obstacle)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def free_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the ephemeral range and not in taken."""
    low, high = ephemeral_ports()
    # The larger of the two gaps around the ephemeral range (10000-32767 with Linux's defaults).
    below, above = (10000, low - 1), (high + 1, 65535)
    start, end = below if below[1] - below[0] >= above[1] - above[0] else above
    for _ in range(1000):
        port = _RANDOM.randint(start, end)
        if port not in taken and port_bindable(port):
            return port
    raise RuntimeError(f"no free TCP port in {start}-{end} on 127.0.0.1")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether a GET of url answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Poll condition until it holds; TimeoutError naming `what` otherwise.

    `alive` returns a reason when the thing being waited for has died (then waiting stops
    at once with that reason instead of running into the timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if alive is not None and (reason := alive()) is not None:
            raise RuntimeError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def start_group(
    command: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start command in a new session (its own process group), stdout+stderr appended to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of group pgid is still alive (zombies of our children count as dead)."""
    return signal_group(pgid, 0) and _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    # os.killpg(pgid, 0) succeeds while a member is a zombie; look at /proc for a real one.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop_group(pgid: int, *, grace: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group pgid, SIGKILL whatever is left after grace seconds; reap proc if given."""
    if signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()
            if not group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            signal_group(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def kill_group(pgid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL the group at once (a crash, not a shutdown); reap proc if given."""
    signal_group(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
