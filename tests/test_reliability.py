"""Reliability: every bad input gets one clear line before any work, and nothing a user owns is lost.

The table at the heart of this file is bad inputs x every script except training: each
case runs the real script file (through ``tests/script_runner.py``, which forks a process
per run so that torch is imported once) on tiny inputs made here, and checks the exit
code, exactly one line on stderr that names what is wrong, no traceback, no file left
behind and no input or unrelated file changed.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch
from PIL import Image

from distill.objective.config import CriterionConfig
from distill.objective.lossnet import WeightsFileError, build_loss_network
from distill.targets.generation import generate_targets
from distill.targets.locks import KeyLocks
from distill.targets.locks import _is_current as lock_file_is_current
from students import create_student, save_student
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
