"""Reliability: every bad input gets one clear line before any work, and nothing a user owns is lost.

The table at the heart of this file is bad inputs x every script except training: each
case runs the real script file (through ``tests/script_runner.py``, which forks a process
per run so that torch is imported once) on tiny inputs made here, and checks the exit
code, exactly one line on stderr that names what is wrong, no traceback, no file left
behind and no input or unrelated file changed.
"""

from __future__ import annotations

import collections
import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from distill.cli import console
from distill.core.errors import ConfigError, UnavailableError
from distill.objective.config import CriterionConfig
from distill.objective.lossnet import WeightsFileError, build_loss_network
from distill.targets.generation import generate_targets
from distill.targets.locks import KeyLocks
from distill.targets.locks import _is_current as lock_file_is_current
from students import create_student, save_student
from teachers import gatys
from teachers.gatys import TeacherConfig


# --------------------------------------------------------------------------- files the library writes


def test_student_checkpoints_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_student(create_student("fast"), tmp_path / "student.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # not safetensors' owner-only 0600
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]  # no temporary file left


def test_a_refused_weights_file_never_quotes_the_advice_to_unpickle(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "hook": collections.OrderedDict, "call": print}, path)
    with pytest.raises(WeightsFileError) as error:
        build_loss_network("vgg19", weights=str(path))
    message = str(error.value)
    assert str(path) in message and "pickled Python objects" in message
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message


# --------------------------------------------------------------------------- the target store's lock files


def _photo(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_a_finished_generation_leaves_no_lock_files(tmp_path):
    _photo(tmp_path / "contents" / "a.png", 24, 24, seed=1)
    style = _photo(tmp_path / "style.png", 24, 24, seed=2)
    config = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=16), size=16, iterations=1)
    summary = generate_targets(content_dir=tmp_path / "contents", style_paths=[style], store_root=tmp_path / "store",
                               teacher_config=config)
    assert summary.new == 1
    assert not (tmp_path / "store" / "locks").exists()


def test_a_lock_file_deleted_by_its_holder_cannot_be_held_twice(tmp_path):
    first, second, third = KeyLocks(tmp_path / "locks"), KeyLocks(tmp_path / "locks"), KeyLocks(tmp_path / "locks")
    assert first.acquire("key") and not second.acquire("key")
    stale = os.open(tmp_path / "locks" / "key.lock", os.O_RDWR)  # opened just before the holder lets go
    first.release("key")
    assert not (tmp_path / "locks" / "key.lock").exists()
    assert not lock_file_is_current(stale, tmp_path / "locks" / "key.lock")  # locking it would count for nothing
    os.close(stale)
    assert second.acquire("key") and not third.acquire("key")
    second.release_all()
    assert not (tmp_path / "locks").exists()


# --------------------------------------------------------------------------- sizes and memory


def test_the_teacher_refuses_sizes_below_its_minimum_and_above_memory(monkeypatch):
    with pytest.raises(ConfigError, match="size must be at least 16 px"):
        TeacherConfig(size=8)
    assert gatys.content_size_problem(1, 1, 512) == "too small (1x1 px; every side needs at least 16 px)"
    assert gatys.content_size_problem(20, 1000, 512).startswith("too elongated (1000x20 px becomes 512x10")
    config = TeacherConfig(criterion=CriterionConfig(weights="random"), size=512)
    assert gatys.memory_estimate(config, (512, 512)) == 512 * 512 * (2000 + (2 * 100 + 3) * 12)
    monkeypatch.setattr(gatys, "memory_capacity", lambda device: 10**9)
    gatys.check_memory(config, (256, 256), device="cpu")  # fits
    with pytest.raises(gatys.TeacherInputError, match=r"^--size 512: the teacher would need about 1\.2 GB for a 512x512 "
                       r"result, more than the 1\.0 GB of memory on cpu; use a smaller --size$"):
        gatys.check_memory(config, (512, 512), device="cpu")
    huge_style = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=40000), size=64)
    with pytest.raises(gatys.TeacherInputError, match=r"^--style-size 40000: .* for the style statistics, .*smaller --style-size$"):
        gatys.check_memory(huge_style, (64, 64), device="cpu", styles=[(400, 300)])


# --------------------------------------------------------------------------- the error policy


def _ended(capsys, main, *argv):
    """Run ``main`` under the console's policy: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        console.run_main(lambda: main(list(argv)))
    return exit_info.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ConfigError("--size 0: too small"), 2, "error: --size 0: too small"),
        (UnavailableError("no internet: pass --weights random"), 1, "error: no internet: pass --weights random"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/out.png"), 2,
         "error: /data/out.png: Permission denied; choose a path you may write to, or fix its permissions"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/out.png"), 1,
         "error: /data/out.png: No space left on device; free some space or choose a folder on another disk"),
        (FileNotFoundError("config.yaml: no such config file"), 2, "error: config.yaml: no such config file"),
        (MemoryError(), 1, "error: out of memory (); use a smaller size, batch or tile"),
        (KeyError("bug"), 1, "error: unexpected KeyError: 'bug'; rerun with --debug for the traceback and report it"),
    ],
)
def test_every_error_ends_as_one_line_with_its_exit_code(capsys, error, code, line):
    def main(argv):
        console.CommandParser(prog="cmd").parse_args(argv)
        raise error

    assert _ended(capsys, main) == (code, [line])


def test_debug_shows_the_traceback_and_bad_options_are_one_line(capsys):
    def main(argv):
        console.CommandParser(prog="cmd").parse_args(argv)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        console.run_main(lambda: main(["--debug"]))
    assert _ended(capsys, main, "--size", "x") == (
        2, ["error: cmd: unrecognized arguments: --size x (see cmd --help)"]
    )
