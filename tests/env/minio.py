"""A real MinIO server on a free loopback port with its own data directory, for tests and
`make dev-up`: start, stop (SIGTERM then SIGKILL), start again on the same port and data
(objects persist), or kill it like a crash. It never touches ~/.minio or a public port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.env import binaries
from tests.env.process import free_port, http_ok, kill_group, start_group, stop_group, wait_until


class MinioServer:
    """One `minio server` process; the port, data dir and credentials stay fixed across restarts."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        console_port: int | None = None,
        access_key: str = "atoll-minio",
        secret_key: str | None = None,
        binary: Path | None = None,
    ) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="atoll-minio-"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "minio.log"
        self.port = port or free_port()
        self.console_port = console_port or free_port()
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.binary = binary or binaries.binary("minio")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """host:port, without a scheme (what MINIO_ENDPOINT holds)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """The variables atoll's store reads to reach this server."""
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
        }

    def client(self) -> object:
        """A `minio.Minio` client for this server (typed loosely: minio ships no stubs)."""
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def start(self, *, timeout: float = 60.0) -> MinioServer:
        """Start the server (again) and wait until /minio/health/live answers."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_dir = self.directory / "config"
        (config_dir / "certs").mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(config_dir),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "on",
            # Single-drive test server: no "drive is not on a dedicated disk" refusals.
            "MINIO_CI_CD": "on",
        }
        command = [
            str(self.binary), "server", str(self.data_dir),
            "--address", self.endpoint,
            "--console-address", f"127.0.0.1:{self.console_port}",
            "--certs-dir", str(config_dir / "certs"),
            "--quiet",
        ]  # fmt: skip
        self._proc = start_group(command, log=self.log_path, env=env)
        proc = self._proc
        try:
            wait_until(
                lambda: http_ok(f"{self.url}/minio/health/live"),
                timeout=timeout,
                what=f"MinIO on {self.endpoint}",
                alive=lambda: None if proc.poll() is None else f"exited with {proc.returncode}; {self._log_tail()}",
            )
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, *, grace: float = 10.0) -> None:
        """Graceful stop: SIGTERM, SIGKILL after grace seconds."""
        if self._proc is not None:
            stop_group(self._proc.pid, grace=grace, proc=self._proc)
        self._proc = None

    def kill(self) -> None:
        """Crash-stop with SIGKILL (data written so far stays on disk)."""
        if self._proc is not None:
            kill_group(self._proc.pid, self._proc)
        self._proc = None

    def restart(self) -> MinioServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the data directory if this server created it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> MinioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
