"""`load_config` on files that are not a registry: one ConfigError of one line, nothing else.

Whatever the path holds (a YAML shape no registry has, a FIFO, a device, a huge file, bytes
that are not UTF-8, nothing), loading ends quickly in a `ConfigError` whose message is one line
saying what is wrong and where, without blocking, without reading more than the size limit.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import router.registry.loading as loading
from router.registry.loading import MAX_REGISTRY_BYTES, ConfigError, load_config, read_registry
from tests.support import REPO

Write = Callable[[Path], object]


def text(content: str) -> Write:
    return lambda path: path.write_text(content)


def raw(content: bytes) -> Write:
    return lambda path: path.write_bytes(content)


def symlink_to(target: str) -> Write:
    return lambda path: path.symlink_to(target)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def directory(path: Path) -> None:
    path.mkdir()


def sized(size: int) -> Write:
    def write(path: Path) -> None:
        with open(path, "wb") as file:
            file.write(b"# a comment line of a registry that is far too large\n" * (size // 54 + 1))

    return write


# (case, how the file is made, what the one line must say)
HOSTILE: list[tuple[str, Write, str]] = [
    ("complex key", text("? [a, b] : c\n"), "line 1, column 3: invalid YAML: a key must be a plain value"),
    ("nested key of a section", text("experiments:\n  ? {a: 1}\n  : c\n"), "line 2, column 5: invalid YAML: a key must be a plain value"),
    ("100k nested [", text("[" * 100_000 + "\n"), "line 1, column 65: invalid YAML: nested deeper than 64 levels"),
    ("symlink to /dev/zero", symlink_to("/dev/zero"), "cannot read: a character device, not a regular file"),
    ("FIFO", fifo, "cannot read: a FIFO, not a regular file"),
    ("directory", directory, "cannot read: a directory, not a regular file"),
    ("2 MiB", sized(2 << 20), f"a registry may be at most {MAX_REGISTRY_BYTES} bytes"),
    ("invalid UTF-8", raw(b"router:\n  host: \xff\xfe\n"), "line 2: not UTF-8 text (byte 0xff at offset 16)"),
    ("NUL character", raw(b"router: {}\nx: \x00\n"), "line 2: invalid YAML: character #x0000"),
    ("empty", text(""), "(top level): the file is empty"),
    ("only comments", text("# nothing here yet\n"), "(top level): the file is empty"),
    ("missing", lambda path: None, "cannot read: No such file or directory"),
    ("dangling symlink", symlink_to("/nonexistent/registry.yaml"), "cannot read: No such file or directory"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "write", "says"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_a_file_that_is_no_registry_is_one_config_error_of_one_line(
    tmp_path: Path, case: str, write: Write, says: str
) -> None:
    path = tmp_path / "experiments.yaml"
    write(path)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert time.monotonic() - started < 30  # never blocks (a FIFO) nor reads forever
    assert len(caught.value.problems) == 1
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert says in message


def test_a_regular_file_through_a_symlink_is_read(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text((REPO / "experiments.yaml").read_text())
    link = tmp_path / "experiments.yaml"
    link.symlink_to(target)
    assert "sentiment" in load_config(link).experiments


def test_a_file_at_the_limit_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_bytes(b"#" * MAX_REGISTRY_BYTES)
    assert len(read_registry(path)) == MAX_REGISTRY_BYTES
    path.write_bytes(b"#" * (MAX_REGISTRY_BYTES + 1))
    with pytest.raises(ConfigError, match="too large"):
        read_registry(path)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """50 MB: refused from its size, in far less than a second, without its bytes in memory."""
    path = tmp_path / "experiments.yaml"
    sized(50_000_000)(path)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ConfigError, match="too large"):
        load_config(path)
    assert time.monotonic() - started < 5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 10_000


def test_an_unexpected_exception_while_validating_is_one_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validator that fails on input nobody foresaw: still one line, with what failed."""

    def broken(*args: object, **kwargs: object) -> list[str]:
        raise RecursionError("maximum recursion depth exceeded\nwhile validating")

    monkeypatch.setattr(loading, "registry_problems", broken)
    path = tmp_path / "experiments.yaml"
    path.write_text((REPO / "experiments.yaml").read_text())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: cannot validate: RecursionError: maximum recursion depth exceeded while "
        "validating"
    )


def test_an_unexpected_exception_while_parsing_is_one_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> object:
        raise MemoryError

    monkeypatch.setattr(yaml, "load", out_of_memory)
    path = tmp_path / "experiments.yaml"
    path.write_text("router: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: invalid YAML: MemoryError"


def test_every_problem_is_one_line_and_a_long_list_is_cut_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text("".join(f"key{index}: 1\n" for index in range(300)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 300  # every one kept
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 300 problems"
    assert lines[-1] == f"  ... and {300 - loading.MAX_LISTED_PROBLEMS} more"
