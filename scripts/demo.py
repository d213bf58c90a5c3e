"""The main job on one machine: two real Paddle Serving backends, the router, simulated users.

Run by scripts/demo.sh after setup. Steps:

1. train and export the two demo models (skipped when models/ has them);
2. copy experiments.yaml into the run dir (logs, state and the registry edits stay there) and
   start both Paddle Serving servers (`serving up`) and the router on it;
3. phase 1: users arrive with the treatment at 10%;
4. phase 2: the registry file is edited to 50%; the router hot-reloads it;
5. phase 3: the treatment server is frozen (SIGSTOP): its requests time out, users get control's
   answers (fallback), the SLO guard rolls the treatment back; then it is thawed;
6. the analysis report: verdict, lift with interval, SRM check, plots.

Everything started here is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serving.launcher import stop_process_group  # noqa: E402
from serving.supervisor import signal_tree  # noqa: E402
from serving.synthetic import make_reviews  # noqa: E402

PYTHON = sys.executable
EXPERIMENT = "sentiment"
CITIES = (("beijing", 0.35), ("shanghai", 0.30), ("shenzhen", 0.20), ("chengdu", 0.15))
DEVICES = (("android", 0.5), ("ios", 0.4), ("web", 0.1))
ADMIN_TOKEN = "demo-admin-token"
COMPLAINT_RATE = 0.05  # chance that a wrong answer makes the user complain


@dataclass(frozen=True)
class User:
    unit: str
    city: str
    device: str
    visits: int
    seed: int


@dataclass
class Tally:
    """What the simulated users saw."""

    requests: int = 0
    failed: int = 0
    conversions: int = 0
    groups: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0

    def line(self) -> str:
        share = self.groups["treatment"] / max(1, self.requests)
        return (
            f"{self.requests} requests, {self.failed} failed, {self.fallbacks} fallbacks, "
            f"treatment share {share:.1%}, versions {dict(self.versions)}, "
            f"{self.conversions} conversions"
        )


def make_users(count: int, seed: int, first_id: int = 0) -> list[User]:
    rng = random.Random(seed)
    users = []
    for i in range(first_id, first_id + count):
        city = rng.choices([c for c, _ in CITIES], [w for _, w in CITIES])[0]
        device = rng.choices([d for d, _ in DEVICES], [w for _, w in DEVICES])[0]
        users.append(User(f"user-{i:06d}", city, device, rng.randint(1, 3), rng.randrange(2**31)))
    return users


class Traffic:
    """Simulated users calling the router like a Paddle Serving client, and converting.

    A user converts after an answer with a probability that is higher when the served model got
    their review right, so the better model earns a real lift.
    """

    def __init__(
        self, router_url: str, route: str, base_rate: float, bonus: float, concurrency: int
    ):
        self.router_url = router_url
        self.route = route
        self.base_rate = base_rate
        self.bonus = bonus
        self.concurrency = concurrency

    async def run(
        self, users: Sequence[User], label: str, until: Callable[[], bool] | None = None
    ) -> Tally:
        """Send `users` through the router; stop early once `until()` (polled each second) holds."""
        tally = Tally()
        queue: asyncio.Queue[User] = asyncio.Queue()
        for user in users:
            queue.put_nowait(user)
        progress = tqdm(total=sum(u.visits for u in users), desc=label, unit="req", leave=True)
        timeout = aiohttp.ClientTimeout(total=10)
        done = asyncio.Event()

        async def watch() -> None:
            while until is not None and not done.is_set():
                if await asyncio.get_running_loop().run_in_executor(None, until):
                    done.set()
                await asyncio.sleep(1)

        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def worker() -> None:
                while not queue.empty() and not done.is_set():
                    await self._visit(session, queue.get_nowait(), tally, progress)

            watcher = asyncio.ensure_future(watch())
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            done.set()
            await watcher
        progress.close()
        return tally

    async def _visit(
        self, session: aiohttp.ClientSession, user: User, tally: Tally, progress: tqdm
    ) -> None:
        reviews = make_reviews(user.visits, seed=user.seed)
        rng = random.Random(user.seed)
        headers = {"X-User-Id": user.unit, "X-City": user.city, "X-Device": user.device}
        converted = False
        for tokens, label in zip(reviews.tokens, reviews.labels):
            body = {"key": ["x"], "value": [json.dumps([tokens.tolist()])]}
            tally.requests += 1
            progress.update()
            try:
                async with session.post(
                    self.router_url + self.route, json=body, headers=headers
                ) as reply:
                    answer = await reply.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                tally.failed += 1
                continue
            if answer.get("err_no") != 0:
                tally.failed += 1
                continue
            experiment = answer.get("experiment", {})
            tally.groups[experiment.get("group", "?")] += 1
            tally.versions[experiment.get("version", "?")] += 1
            tally.fallbacks += bool(experiment.get("fallback"))
            predicted = int(np.argmax(json.loads(answer["value"][0])[0]))
            correct = predicted == int(label)
            if not converted and rng.random() < self.base_rate + self.bonus * correct:
                converted = True
                tally.conversions += 1
                await self._send(session, [
                    {"unit_id": user.unit, "metric": "conversion", "value": 1},
                    {"unit_id": user.unit, "metric": "revenue", "value": round(rng.uniform(5, 50), 2)},
                ])  # fmt: skip
            elif not correct and rng.random() < COMPLAINT_RATE:
                await self._send(
                    session, [{"unit_id": user.unit, "metric": "complaint", "value": 1}]
                )

    async def _send(self, session: aiohttp.ClientSession, events: list[dict[str, Any]]) -> None:
        async with session.post(self.router_url + "/events", json=events) as reply:
            reply.raise_for_status()


def prepare_registry(run_dir: Path, models: Path) -> tuple[Path, dict[str, Any]]:
    """The repo's experiments.yaml, copied with its paths pointed into the run dir."""
    registry = yaml.safe_load((REPO_ROOT / "experiments.yaml").read_text())
    registry["router"]["log_dir"] = str(run_dir / "logs")
    registry["router"]["state_dir"] = str(run_dir / "state")
    for backend in registry["backends"].values():
        backend["model"] = str(models / Path(backend["model"]).name)
    path = run_dir / "experiments.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path, registry


def set_traffic(config_path: Path, traffic: float) -> None:
    """Edit the registry file in place, as an engineer would (the router watches it)."""
    registry = yaml.safe_load(config_path.read_text())
    registry["experiments"][EXPERIMENT]["traffic"] = traffic
    temporary = config_path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(registry, sort_keys=False))
    os.replace(temporary, config_path)


def get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def experiment_state(router_url: str) -> dict[str, Any]:
    found: dict[str, Any] = get_json(router_url + "/experiments")["experiments"][EXPERIMENT]
    return found


def rolled_back(router_url: str) -> Callable[[], bool]:
    return lambda: experiment_state(router_url).get("status") == "rolled_back"


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not seen within {timeout:.0f}s")


@contextmanager
def started_process(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)  # fmt: skip
    try:
        yield process
    finally:
        stop_process_group(process.pid)
        process.wait()


@contextmanager
def backends_up(config_path: Path, run_dir: Path) -> Iterator[None]:
    serving = [PYTHON, "-m", "serving"]
    common = ["--config", str(config_path), "--run-dir", str(run_dir)]
    subprocess.run([*serving, "up", *common], cwd=REPO_ROOT, check=True)
    try:
        yield
    finally:
        subprocess.run([*serving, "down", *common], cwd=REPO_ROOT, check=False)


def backend_pid(run_dir: Path, backend: str) -> int:
    (pid_file,) = (run_dir / "serving").glob(f"{backend}-*.json")
    return int(json.loads(pid_file.read_text())["pid"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=3000, help="users in phases 1 and 2")
    parser.add_argument(
        "--rollback-users",
        type=int,
        default=3000,
        help="most users sent while waiting for the rollback",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="users in flight at once")
    parser.add_argument(
        "--base-rate", type=float, default=0.05, help="conversion chance per answer"
    )
    parser.add_argument(
        "--bonus", type=float, default=0.30, help="extra chance when the answer is right"
    )
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / "run" / "demo")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    # SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` below stops what it started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)

    if not (args.models / "sentiment_v2" / "bundle.json").exists():
        print(f"== training and exporting the demo models into {args.models}")
        subprocess.run(
            [PYTHON, "-m", "serving", "demo-models", "--out", str(args.models)],
            cwd=REPO_ROOT,
            check=True,
        )

    if args.run_dir.exists():
        import shutil

        shutil.rmtree(args.run_dir)
    args.run_dir.mkdir(parents=True)
    config_path, registry = prepare_registry(args.run_dir, args.models.resolve())
    router_conf = registry["router"]
    router_url = f"http://{router_conf['host']}:{router_conf['port']}"
    route = registry["experiments"][EXPERIMENT]["route"]
    env = {**os.environ, router_conf["admin_token_env"]: ADMIN_TOKEN, "PYTHONPATH": str(REPO_ROOT)}
    traffic = Traffic(router_url, route, args.base_rate, args.bonus, args.concurrency)
    users = make_users(args.users, args.seed)
    split = int(len(users) * 0.4)

    with ExitStack() as stack:
        print("== starting the two Paddle Serving pipeline servers")
        stack.enter_context(backends_up(config_path, args.run_dir))
        print(f"== starting the router on {router_url}")
        router = stack.enter_context(
            started_process(
                [PYTHON, "-m", "router", "--config", str(config_path)],
                args.run_dir / "router.log",
                env,
            )
        )
        wait_for(lambda: router.poll() is None and _ok(router_url + "/readyz"), 60, "router ready")

        print(
            f"== phase 1: {split} users, treatment at {registry['experiments'][EXPERIMENT]['traffic']}%"
        )
        print("   ", asyncio.run(traffic.run(users[:split], "phase 1")).line())

        print("== phase 2: editing the registry to traffic: 50 (hot reload, no restart)")
        set_traffic(config_path, 50)
        took = wait_for(
            lambda: experiment_state(router_url).get("traffic") == 50, 10, "reload to 50%"
        )
        print(f"   the router serves 50% {took:.1f}s after the edit")
        print("   ", asyncio.run(traffic.run(users[split:], "phase 2")).line())

        print(
            "== phase 3: the treatment server freezes (SIGSTOP); the SLO guard should roll it back"
        )
        treatment_pid = backend_pid(args.run_dir, registry["experiments"][EXPERIMENT]["treatment"])
        slo = registry["experiments"][EXPERIMENT]["slo"]
        print(
            f"   (slo: p99 <= {slo['p99_ms']} ms, error rate <= {slo['error_rate']}, "
            f"{slo['failed_checks']} failed checks in a row, one every {slo['interval']})"
        )
        signal_tree(treatment_pid, signal.SIGSTOP)  # its worker has a process group of its own
        frozen_at = time.monotonic()
        try:
            extra = make_users(args.rollback_users, args.seed + 1, first_id=args.users)
            tally = asyncio.run(traffic.run(extra, "phase 3", until=rolled_back(router_url)))
            print("   ", tally.line())
            if not rolled_back(router_url)():
                raise RuntimeError("the SLO guard did not roll the frozen treatment back")
            print(f"   rolled back {time.monotonic() - frozen_at:.0f}s after the freeze")
        finally:
            signal_tree(treatment_pid, signal.SIGCONT)
        state = experiment_state(router_url)
        print(
            f"   last decision: {json.dumps(state.get('last_decision', state), default=str)[:400]}"
        )
        after = asyncio.run(traffic.run(make_users(100, args.seed + 2, first_id=10**6), "after"))
        print("    after the rollback:", after.line())

    print("== analysis")
    report_dir = args.run_dir / "report"
    subprocess.run(
        [PYTHON, "-m", "analysis", "report", "--config", str(config_path), "--logs", str(args.run_dir / "logs"),
         "--experiment", EXPERIMENT, "--out", str(report_dir)],
        cwd=REPO_ROOT, check=True,
    )  # fmt: skip
    print(f"\nreport: {report_dir}/report.md, {report_dir}/report.html (plots beside them)")
    print(f"logs:   {args.run_dir}/logs (exposures, outcomes, decisions)")
    return 0


def _ok(url: str) -> bool:
    try:
        get_json(url)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped", file=sys.stderr)
        sys.exit(130)
