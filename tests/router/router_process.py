"""The real router as a child process (`python -m router`), on a port it picks itself."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

REPO_ROOT = REPO


@dataclass
class RouterProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL only if it hangs)."""
        try:
            if self.process.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    return self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                    raise
            return self.process.returncode
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def wait(self, timeout: float) -> int:
        """The exit code once the router has exited by itself (after a signal already sent)."""
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")


def start_router(config: Path, log_file: Path, *extra: str, timeout: float = 20.0) -> RouterProcess:
    """Start the router with --port 0 and read the port from its first line of output."""
    with open(log_file, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "router", "--config", str(config), "--port", "0", *extra],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if process.poll() is not None:
            break
        if selector.select(timeout=0.1):
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    selector.close()
    text = line.decode()
    if not text.startswith("router: serving on "):
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(
            f"router did not start: {text!r}\n{log_file.read_text(errors='replace')}"
        )
    return RouterProcess(process, text.split()[-1], log_file)
