"""The small process that `python -m serving serve` runs in front of the Paddle Serving worker.

Paddle installs its own SIGTERM handler, and Paddle Serving's HTTP gateway is a child process
of the worker that outlives it; so the process that receives signals is this supervisor, which
never imports Paddle. On SIGTERM (SIGINT, SIGHUP) it asks the worker to drain, waits for it at
most the grace period (plus a margin for the worker's own exit), then kills whatever of its
process tree is left and reaps it: when the supervisor exits, nothing it started remains.

The supervisor is a child subreaper (Linux), so a descendant whose parent dies (the gateway when
the worker crashes) is reparented to it rather than to init: every descendant stays its child
or a child's descendant, and "no child left to wait for" means "nothing of the tree left".

The worker runs in a process group of its own: Paddle Serving SIGKILLs its whole process group
when a predictor cannot be created (paddle_serving_app.local_predict), which must not take the
supervisor (or whatever else shares its group, such as the shell script that started it) along.
Tied back to the supervisor by PR_SET_PDEATHSIG, the worker and its gateway die with it even
when the supervisor is SIGKILLed; Ctrl-C at a terminal reaches the supervisor alone, which
drains. The worker takes its drain request on stdin (`serving.draining`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
# Past the grace period: the worker lets the gateway pass on its last answers (<= 1 s) and exits.
EXIT_MARGIN_S = 3.0
# How long killed processes get to be reaped before the supervisor gives up on them (a process
# stuck in uninterruptible sleep cannot be waited for forever).
REAP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux only); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc, parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie is dead already; reaping it is all that is left
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def signal_tree(pid: int, signum: int) -> None:
    """Send `signum` to `pid` and every descendant (they span several process groups)."""
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signum)


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def log(message: str) -> None:
    # After a SIGHUP the terminal may be gone: a lost line must not stop the drain.
    with contextlib.suppress(OSError):
        print(f"serve: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Runs one worker command and answers stop signals with a drain, then a clean tree."""

    def __init__(self, worker_command: Sequence[str], grace_s: float) -> None:
        self.worker_command = list(worker_command)
        self.grace_s = grace_s
        self.worker_pid = 0
        self.worker_status: Optional[int] = None  # exit code (128 + signal if killed)
        self.control_fd = -1

    def run(self) -> int:
        become_subreaper()
        # Signals are taken synchronously (sigtimedwait): no handler can interrupt a half-done
        # step. The worker starts with an empty mask, set by posix_spawn itself.
        signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGCHLD})
        self._spawn_worker()
        stop_signal = self._wait(deadline=None)
        if stop_signal is None:  # the worker exited on its own: nothing to drain
            left = self._kill_the_rest()
            left_behind = f"killed {left} processes it left" if left else "nothing else was left"
            log(f"the worker exited with {self.worker_status}; {left_behind}")
            return self.worker_status or 0
        return self._drain(stop_signal)

    def _spawn_worker(self) -> None:
        read_fd, self.control_fd = os.pipe()  # both close-on-exec; dup2 clears it on stdin
        self.worker_pid = os.posix_spawn(
            self.worker_command[0],
            self.worker_command,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, read_fd, 0)],
            setpgroup=0,  # a group of its own (module docstring)
            setsigmask=(),
        )
        os.close(read_fd)

    def _drain(self, stop_signal: int) -> int:
        name = signal.Signals(stop_signal).name
        log(f"{name}: draining the worker (grace {self.grace_s:g} s; a second signal stops now)")
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the worker may be gone already
            os.write(self.control_fd, b"drain\n")
        deadline = started + self.grace_s + EXIT_MARGIN_S
        second = self._wait(deadline=deadline)
        drained = self.worker_status is not None
        left = self._kill_the_rest()
        took = time.monotonic() - started
        if drained:
            killed = f"killed {left} processes left behind" if left else "no process left"
            log(
                f"stopped in {took:.2f} s: the worker drained (exit {self.worker_status}); {killed}"
            )
            return 0 if self.worker_status == 0 else 1
        why = "a second signal" if second is not None else f"the grace period ({self.grace_s:g} s)"
        log(f"stopped in {took:.2f} s: {left} processes killed after {why}")
        return 1

    def _wait(self, deadline: Optional[float]) -> Optional[int]:
        """Reap children until the worker exits (None) or a stop signal comes (its number).

        Returns None also when `deadline` (monotonic) passes first.
        """
        watched = {*STOP_SIGNALS, signal.SIGCHLD}
        while True:
            self._reap()
            if self.worker_status is not None:
                return None
            timeout = 1.0 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                return None
            info = signal.sigtimedwait(watched, min(timeout, 1.0))
            if info is not None and info.si_signo in STOP_SIGNALS:
                return info.si_signo

    def _reap(self) -> bool:
        """Wait for every exited child; False once no child is left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.worker_pid:
                self.worker_status = os.waitstatus_to_exitcode(status)
                if self.worker_status < 0:  # killed by a signal: the shell's convention
                    self.worker_status = 128 - self.worker_status

    def _kill_the_rest(self) -> int:
        """SIGKILL every descendant still there and reap until none is left; how many were."""
        with contextlib.suppress(OSError):
            os.close(self.control_fd)
        killed: set[int] = set()
        deadline = time.monotonic() + REAP_TIMEOUT_S
        while self._reap():
            # Walked again each round: a process may fork before it gets its SIGKILL.
            for pid in descendants(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            if time.monotonic() > deadline:
                log(f"processes {sorted(descendants(os.getpid()))} did not go; giving up on them")
                break
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
        return len(killed)


def supervise(worker_command: Sequence[str], grace_s: float) -> int:
    """Run `worker_command` under a Supervisor; its exit code (0 after a clean drain)."""
    try:
        return Supervisor(worker_command, grace_s).run()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            log(f"cannot start the worker: {exc}")
            return 127
        raise
