"""Start and stop the Azurite pinned in package.json: on free ports for the tests and the demo, on Azurite's
own default ports (10000-10002, what `UseDevelopmentStorage=true` names) for `make serve`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.storage import azurite_connection_string

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "node_modules" / ".bin" / "azurite"
DEFAULT_PORTS = (10000, 10001, 10002)  # blob, queue, table


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct free ports: every socket stays bound until all are, so no two can be the same port."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)


def free_port() -> int:
    return free_ports(1)[0]


def _wait_for(port: int, deadline: float, process: subprocess.Popen) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited before it opened port {port}")
        time.sleep(0.1)
    raise RuntimeError(f"Azurite did not open port {port} in time")


@dataclass
class Azurite:
    process: subprocess.Popen
    ports: tuple[int, int, int]
    location: Path
    log: Path
    _owns_location: bool

    @property
    def connection_string(self) -> str:
        blob, queue, table = self.ports
        return azurite_connection_string(blob=blob, queue=queue, table=table)

    def stop(self, *, keep_location: bool = False) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._owns_location and not keep_location:
            shutil.rmtree(self.location, ignore_errors=True)


def start_azurite(
    *,
    location: Path | None = None,
    in_memory: bool = False,
    timeout: float = 30.0,
    ports: tuple[int, int, int] | None = None,
) -> Azurite:
    """Start Azurite with its data in `location` (or a temporary folder, or in memory) on `ports` (free ones
    if not given) and wait until it listens."""
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} is missing: run `npm ci` (make does it for you)")
    owns = location is None
    location = Path(location or tempfile.mkdtemp(prefix="azurite-"))
    location.mkdir(parents=True, exist_ok=True)
    for port in ports or ():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(f"port {port} is taken (another Azurite?); stop it, or use free ports")
    log = location / "azurite.log"
    # Free ports are free when chosen, not when Azurite binds them: another process may take one meanwhile, and
    # then Azurite exits (EADDRINUSE in its log). Free ones are chosen again, up to _ATTEMPTS times.
    attempt = 1
    while True:
        try:
            return _start(ports or free_ports(3), location, log, owns, in_memory=in_memory, timeout=timeout)
        except RuntimeError:
            taken = log.exists() and "EADDRINUSE" in log.read_text(errors="replace")
            if ports or not taken or attempt == _ATTEMPTS:
                if owns:
                    shutil.rmtree(location, ignore_errors=True)
                raise
            attempt += 1


_ATTEMPTS = 3


def _start(
    ports: tuple[int, int, int], location: Path, log: Path, owns: bool, *, in_memory: bool, timeout: float
) -> Azurite:
    args = [
        str(BINARY),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
        "--blobHost", "127.0.0.1", "--blobPort", str(ports[0]),
        "--queueHost", "127.0.0.1", "--queuePort", str(ports[1]),
        "--tableHost", "127.0.0.1", "--tablePort", str(ports[2]),
    ]  # fmt: skip
    # Azurite takes either a data folder or memory; the folder still holds the log.
    args += ["--inMemoryPersistence"] if in_memory else ["--location", str(location)]
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}, cwd=location)
    azurite = Azurite(process, ports, location, log, owns)
    deadline = time.monotonic() + timeout
    try:
        for port in ports:
            _wait_for(port, deadline, process)
    except RuntimeError:
        azurite.stop(keep_location=True)  # the caller decides: it may start again in the same folder
        raise RuntimeError(f"Azurite failed to start; see {log}") from None
    return azurite
