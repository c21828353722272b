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

import pytest
import torch

from distill.objective.lossnet import WeightsFileError, build_loss_network
from students import create_student, save_student


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
