"""Atomic writes (issue 17): a killed write's hidden temporary is removed by the next write beside it, and
files and folders get the user's umask permissions, not mkstemp's private 0600 / 0700."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fine_deploy.fileio import atomic_directory, atomic_write_bytes, atomic_write_json, remove_leftovers

KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from fine_deploy.fileio import atomic_directory
with atomic_directory(Path(sys.argv[1])) as tmp:
    (tmp / "model.onnx").write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target: Path) -> Path:
    r = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    left = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    assert len(left) == 1 and left[0].name.endswith(".tmp") and left[0].is_dir(), left
    assert not target.exists()
    return left[0]


def test_killed_directory_write_is_cleaned_by_the_next_write_beside_it(tmp_path):
    left = _killed_write(tmp_path / "export")
    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "model.onnx").write_bytes(b"whole")
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # a file write into the same folder also cleans up (a plan.json written beside a killed export)
    left = _killed_write(tmp_path / "other")
    atomic_write_json(tmp_path / "plan.json", {"a": 1})
    assert not left.exists()


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    mine = tmp_path / f".x.{os.getpid()}-abcdefgh.tmp"
    mine.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".y.{proc.pid}-abcdefgh.tmp"
        theirs.mkdir()
        assert remove_leftovers(tmp_path) == []
        assert mine.exists() and theirs.exists()
    finally:
        proc.kill()
        proc.wait()
    assert remove_leftovers(tmp_path) == [theirs]


def test_user_files_that_look_similar_are_kept(tmp_path):
    for name in ("notes.tmp", ".bashrc", "model.onnx.tmp", ".x.tmp"):
        (tmp_path / name).write_text("mine")
    assert remove_leftovers(tmp_path) == []
    assert len(list(tmp_path.iterdir())) == 4


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "plan.json", {"a": 1})
        atomic_write_bytes(tmp_path / "m.bin", b"x")
        with atomic_directory(tmp_path / "art") as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
            atomic_write_json(tmp / "manifest.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plan.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "m.bin").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "art" / "manifest.json").stat().st_mode) == file_mode
    assert (stat.S_IMODE((tmp_path / "art" / "manifest.json").stat().st_mode)
            == stat.S_IMODE((tmp_path / "art" / "model.onnx").stat().st_mode))
