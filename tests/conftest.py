"""Session fixtures: the demo model bundles and real Paddle Serving pipeline servers on them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from serving.launcher import ServerProcess, free_port, start_server

# The `redis_server` fixture: a real Redis for the fleet's tests.
pytest_plugins = ["tests.redis_server"]

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_SOURCES = [
    "serving/demo_models.py",
    "serving/synthetic.py",
    "serving/export.py",
    "serving/bundle.py",
]


def _models_key() -> str:
    digest = hashlib.sha256()
    for source in MODEL_SOURCES:
        digest.update((REPO_ROOT / source).read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """`sentiment_v1` and `sentiment_v2` bundles, trained once and cached under build/.

    The cache key is a hash of the code that makes them, so a change retrains. Concurrent
    sessions build into private temp dirs and the first rename wins.
    """
    from serving.demo_models import build_demo_models

    target = REPO_ROOT / "build" / "test-models" / _models_key()
    if not (target / "sentiment_v2" / "bundle.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent))
        build_demo_models(scratch)
        try:
            os.rename(scratch, target)
        except OSError:  # another session finished first
            shutil.rmtree(scratch, ignore_errors=True)
    return target


Backend = ServerProcess
BackendFactory = Callable[..., Backend]


@pytest.fixture(scope="session")
def paddle_backend_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendFactory]:
    """`start(bundle_dir, http_port=None, **options) -> Backend`, ready to answer.

    A Backend has `.url`, `.pid`, `.stop()`, and for fault injection `.kill()` (SIGKILL),
    `.suspend()`/`.resume()` (SIGSTOP/SIGCONT), all on the server's whole process group.

    Every server it started is stopped (its whole process group) at the end of the session.
    """
    started: list[Backend] = []

    def start(bundle_dir: Path, http_port: Optional[int] = None, **options: object) -> Backend:
        port = http_port or free_port()
        workdir = tmp_path_factory.mktemp(f"serving-{bundle_dir.name}-{port}")
        server = start_server(bundle_dir, port, workdir, **options)  # type: ignore[arg-type]
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def paddle_backends(
    demo_models: Path, paddle_backend_factory: BackendFactory
) -> dict[str, Backend]:
    """The two demo versions, each in its own Paddle Serving pipeline server (CPU)."""
    return {
        "sentiment-v1": paddle_backend_factory(demo_models / "sentiment_v1"),
        "sentiment-v2": paddle_backend_factory(demo_models / "sentiment_v2"),
    }
