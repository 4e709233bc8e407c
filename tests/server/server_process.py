"""`rocmforge serve` as a real process on 127.0.0.1, for tests that drive it like a user: port, readiness, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpServerProcess:
    """Any HTTP server command as a subprocess on 127.0.0.1 (rocmforge's, llama-cpp-python's, ...).

    Output goes to a file, not a pipe: a pipe nobody drains fills up with access logs and blocks the server.
    ``ready_path`` is the URL path that answers 200 once the server can take requests.
    """

    def __init__(
        self, command: list[str], port: int, ready_path: str, env: dict[str, str] | None = None, name: str = "server"
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self._log_file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for GET ready_path to answer 200 (the process exiting first fails at once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)  # a client's retry interval while the process boots; not engine synchronization
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log()[-4000:]}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        self._log_file.seek(0)
        return self._log_file.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ServerProcess(HttpServerProcess):
    """``rocmforge serve MODEL --port <free port> *args``."""

    def __init__(self, model: str | Path, *args: str, env: dict[str, str] | None = None) -> None:
        port = free_port()
        command = [sys.executable, "-m", "rocmforge", "serve", str(model), "--port", str(port), *args]
        super().__init__(command, port, "/ready", env, name="rocmforge serve")
