"""Run `bentoml serve` as a child process: start it (for a config or a built Bento), wait until
/readyz answers 200, and stop it by its PID (SIGTERM; SIGKILL of it and its workers by PID if needed)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from longrec.serving.config import CONFIG_ENV, ServingConfig
from longrec.serving.package import REPO_ROOT, bento_environment

__all__ = ["READY_TIMEOUT_S", "ServeProcess", "ServeError", "free_port", "process_cpu_seconds"]

logger = logging.getLogger(__name__)

# How long to wait for /readyz. A ranker compiles its scoring path before it is ready: make run's fresh
# IMN took 49.6 s on a 2-core machine, and with make test's second worker beside it a 90 s wait ran out.
# A process that dies is reported at once, so a long wait costs nothing when start-up fails.
READY_TIMEOUT_S = 300.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used (Linux /proc); 0 if it is gone. The
    serving benchmarks read a service worker's CPU per request from it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it), for a service started next."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServeError(RuntimeError):
    """The service exited or did not become ready; the message holds the tail of its log."""


class ServeProcess:
    """`bentoml serve` of the ranker on 127.0.0.1:``port`` (a context manager that waits until ready)."""

    def __init__(
        self,
        registry_root: str | Path,
        port: int,
        config: ServingConfig | None = None,
        bento_tag: str | None = None,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        if (config is None) == (bento_tag is None):
            raise ValueError("give either a serving config or a Bento tag")
        self.registry_root = Path(registry_root).resolve()
        self.port = port
        self.host = host
        self.config = config
        self.bento_tag = bento_tag
        self.url = f"http://{host}:{port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="longrec-serve-")
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "serve.log"
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = bento_environment(self.registry_root)
        env.update(self.extra_env)
        target = self.bento_tag
        if self.config is not None:
            env[CONFIG_ENV] = str(self.config.to_json(Path(self._tmp.name) / "serving.json"))
            target = "serving.service:Ranker"
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        args = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            target,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        return args, env

    def start(self) -> ServeProcess:
        args, env = self.command()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        logger.info("bentoml serve (pid %d) on %s, log %s", self.process.pid, self.url, self.log_path)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""

    def readyz(self, timeout: float = 2.0) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=timeout)
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until /readyz is 200; ServeError if the process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServeError(f"bentoml serve exited with {self.process.returncode}:\n{self.log_tail()}")
            response = self.readyz()
            if response is not None and response.status_code == 200:
                return
            time.sleep(0.25)
        response = self.readyz()
        detail = f"{response.status_code} {response.text[:500]}" if response is not None else "no answer"
        raise ServeError(f"not ready after {timeout:.0f} s (/readyz: {detail}):\n{self.log_tail()}")

    def _children(self) -> list[tuple[int, str]]:
        """(pid, args) of the serve process's children: its service workers (each in its own group)."""
        if self.process is None:
            return []
        result = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
        children = []
        for line in result.stdout.splitlines():
            pid, ppid, args = line.strip().split(None, 2)
            if int(ppid) == self.process.pid:
                children.append((int(pid), args))
        return children

    def service_workers(self) -> dict[str, list[int]]:
        """{service name (e.g. "MemoryShard0"): PIDs of this server's worker processes of it}."""
        workers: dict[str, list[int]] = {}
        for pid, args in self._children():
            if "--service-name" in args:
                workers.setdefault(args.split("--service-name", 1)[1].split()[0], []).append(pid)
        return workers

    def worker_pids(self, service_name: str) -> list[int]:
        """PIDs of this server's worker processes of ``service_name`` (e.g. "MemoryShard0")."""
        return self.service_workers().get(service_name, [])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the serve process (it stops its workers); SIGKILL to it and to any worker it left."""
        if self.process is None:
            return
        children = [pid for pid, _ in self._children()]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in children:  # only the workers this server started, by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        self.process = None

    def __enter__(self) -> ServeProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
