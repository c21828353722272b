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
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from distill.cli import console
from distill.core.errors import ConfigError, UnavailableError
from distill.core.outputs import OutputPathError, check_output_folder
from distill.deploy import stylize as deploy_stylize
from distill.deploy.model_files import load_model
from distill.deploy.stylize import StylizeInputError
from distill.objective.config import CriterionConfig
from distill.objective.lossnet import WeightsFileError, build_loss_network
from distill.report.files import is_report_folder
from distill.report.options import REPORT_FORMAT
from distill.targets.generation import generate_targets
from distill.targets.locks import KeyLocks
from distill.targets.locks import _is_current as lock_file_is_current
from script_runner import ScriptRunner
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


def _mask(path, height, width, left=(0, 0, 0), right=(255, 255, 255)):
    """A two-region mask in palette colours: ``left`` half and ``right`` half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.empty((height, width, 3), np.uint8)
    array[:, : width // 2], array[:, width // 2 :] = left, right
    Image.fromarray(array).save(path)
    return path


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


# --------------------------------------------------------------------------- bad inputs x every script


ROOT = Path(__file__).resolve().parents[1]


def _permissions_apply() -> bool:
    """Whether a folder without write permission is unwritable to this process (not so for root, as a rule)."""
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o555)
        return not os.access(folder, os.W_OK)
    finally:
        folder.chmod(0o755)
        folder.rmdir()


needs_permissions = pytest.mark.skipif(
    not _permissions_apply(), reason="this process may write anywhere (root): an unwritable folder cannot be made"
)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that says it is ``width`` x ``height`` but holds (almost) no pixels: big to plan, tiny on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Everything the scripts are given: photos, a student, a store, and the user's own files that must survive."""
    base = tmp_path_factory.mktemp("world")
    w = SimpleNamespace(base=base)
    w.content = _photo(base / "content.png", 40, 48, seed=1)
    w.style = _photo(base / "style.png", 32, 32, seed=2)
    w.tiny = _photo(base / "tiny.png", 1, 1, seed=3)
    w.contents = base / "contents"
    for i in range(3):
        _photo(w.contents / f"c{i}.png", 40, 48, seed=10 + i)
    w.content_mask = _mask(base / "content_mask.png", 40, 48)
    w.style_mask = _mask(base / "style_mask.png", 32, 32)
    w.far_mask = _mask(base / "far_mask.png", 20, 20)
    w.red_blue_mask = _mask(base / "red_blue_mask.png", 32, 32, left=(255, 0, 0), right=(0, 0, 255))
    w.notes = base / "notes.txt"
    w.notes.write_text("the user's notes\n")
    w.afile = base / "afile"
    w.afile.write_text("a file where a folder is expected\n")
    w.empty = base / "empty"
    w.empty.mkdir()
    w.unrelated = base / "unrelated"  # someone else's folder, with a report.json of their own
    w.unrelated.mkdir()
    (w.unrelated / "report.json").write_text('{"the user": "keeps this"}\n')
    (w.unrelated / "notes.txt").write_text("keep\n")
    w.readonly = base / "readonly"
    w.readonly.mkdir(mode=0o555)
    torch.manual_seed(0)
    w.checkpoint = save_student(create_student("fast"), base / "student.safetensors")
    w.pickle = base / "student.pt"
    torch.save({"model": collections.OrderedDict(), "call": print}, w.pickle)
    w.store = base / "store"  # a store as made, before any config is registered
    w.store.mkdir()
    (w.store / "store.json").write_text(json.dumps({"format": "distill-target-store", "version": 1}))
    w.big = base / "big"  # same-size photos of 100 MP each (by their headers)
    w.big.mkdir()
    for i in range(16):
        _png_header_only(w.big / f"big{i}.png", 10_000, 10_000)
    yield w
    w.readonly.chmod(0o755)


@pytest.fixture(scope="module")
def runner():
    script_runner = ScriptRunner()
    yield script_runner
    script_runner.close()


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder below ``folder``: kind, permissions and content hash."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[path.relative_to(folder).as_posix()] = (path.is_dir(), stat.S_IMODE(info.st_mode), digest)
    return state


def _teacher(w):
    return ["--style", w.style, "--size", "32", "--iters", "1", "--weights", "random", "--device", "cpu"]


def _case(script, name, args, *expected, code=2, marks=()):
    return pytest.param(script, args, expected, code, id=f"{script.removesuffix('.py')}: {name}", marks=marks)


TEACHER, TARGETS, COMPARE, EXPORT, STYLIZE = (
    "stylize_gatys.py", "generate_targets.py", "compare.py", "export_student.py", "stylize.py",
)

BAD_INPUTS = [
    # --- the Gatys teacher on one photo
    _case(TEACHER, "--size 0", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w), "--size", "0"],
          "--size 0", "at least 16 px"),
    _case(TEACHER, "--size -1", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w), "--size", "-1"],
          "--size -1"),
    _case(TEACHER, "--size 100000", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w), "--size", "100000"],
          "--size 100000", "the teacher would need about", "of memory on"),
    _case(TEACHER, "--style-size 0", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w), "--style-size", "0"],
          "--style-size 0"),
    _case(TEACHER, "a 1x1 content photo", lambda w: ["--content", w.tiny, "--output", w.base / "o.png", *_teacher(w)],
          "tiny.png", "too small (1x1 px"),
    _case(TEACHER, "a content that is not an image", lambda w: ["--content", w.notes, "--output", w.base / "o.png", *_teacher(w)],
          "notes.txt", "not an image"),
    _case(TEACHER, "a missing content", lambda w: ["--content", w.base / "nope.png", "--output", w.base / "o.png", *_teacher(w)],
          "nope.png", "no such file"),
    _case(TEACHER, "--iters 0", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w), "--iters", "0"],
          "--iters 0"),
    _case(TEACHER, "--size not a number", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w), "--size", "ten"],
          "--size", "invalid int value: 'ten'"),
    _case(TEACHER, "--content-weight inf", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w),
                                                      "--content-weight", "inf"], "content-weight", "finite"),
    _case(TEACHER, "--tv-weight nan", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w),
                                                 "--tv-weight", "nan"], "tv-weight", "finite"),
    _case(TEACHER, "--style-weight -1", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w),
                                                   "--style-weight", "-1"], "style-weight", ">= 0"),
    _case(TEACHER, "--content-mask without --style-mask", lambda w: ["--content", w.content, "--output", w.base / "o.png",
                                                                      *_teacher(w), "--content-mask", w.content_mask],
          "--style-mask is missing"),
    _case(TEACHER, "a mask of another photo", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w),
                                                         "--content-mask", w.far_mask, "--style-mask", w.style_mask],
          "far_mask.png", "within 4 px"),
    _case(TEACHER, "masks with no region in common", lambda w: ["--content", w.content, "--output", w.base / "o.png",
                                                                *_teacher(w), "--content-mask", w.content_mask,
                                                                "--style-mask", w.red_blue_mask], "share no region"),
    _case(TEACHER, "a mask that is not an image", lambda w: ["--content", w.content, "--output", w.base / "o.png",
                                                             *_teacher(w), "--content-mask", w.content_mask,
                                                             "--style-mask", w.notes], "notes.txt", "not an image"),
    _case(TEACHER, "--photoreal-weight -1", lambda w: ["--content", w.content, "--output", w.base / "o.png", *_teacher(w),
                                                       "--photoreal-weight", "-1"], "photoreal-weight", ">= 0"),
    _case(TEACHER, "--style-mask with two styles", lambda w: ["--content", w.content, "--output", w.base / "o.png",
                                                              *_teacher(w), "--style", w.style, "--content-mask",
                                                              w.content_mask, "--style-mask", w.style_mask],
          "--style-mask needs exactly one --style"),
    _case(TEACHER, "--output is the mask", lambda w: ["--content", w.content, "--output", w.content_mask, *_teacher(w),
                                                      "--content-mask", w.content_mask, "--style-mask", w.style_mask],
          "--output", "content_mask.png"),
    _case(TEACHER, "--output below a file", lambda w: ["--content", w.content, "--output", w.afile / "o.png", *_teacher(w)],
          "--output", "is a file, not a folder"),
    _case(TEACHER, "--output in an unwritable folder", lambda w: ["--content", w.content, "--output", w.readonly / "o.png",
                                                                  *_teacher(w)], "--output", "permission denied",
          marks=needs_permissions),
    _case(TEACHER, "--output with an unknown suffix", lambda w: ["--content", w.content, "--output", w.base / "o.xyz", *_teacher(w)],
          "--output", "unknown suffix '.xyz'"),
    _case(TEACHER, "--output is a folder", lambda w: ["--content", w.content, "--output", w.empty, *_teacher(w)],
          "--output", "is a folder"),
    _case(TEACHER, "--output is the content photo", lambda w: ["--content", w.content, "--output", w.content, *_teacher(w)],
          "--output", "same file as --content"),
    _case(TEACHER, "--output is the style image", lambda w: ["--content", w.content, "--output", w.style, *_teacher(w)],
          "--output", "same file as --style"),
    _case(TEACHER, "--report is a folder", lambda w: ["--content", w.content, "--output", w.base / "o.png", "--report", w.empty,
                                                      *_teacher(w)], "--report", "is a folder"),
    _case(TEACHER, "--report is the output image", lambda w: ["--content", w.content, "--output", w.base / "o.png", "--report",
                                                        w.base / "o.png", *_teacher(w)], "--report", "unknown suffix"),
    # --- teacher targets into a store
    _case(TARGETS, "--size 0", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w), "--size", "0"],
          "--size 0"),
    _case(TARGETS, "--size -1", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w), "--size", "-1"],
          "--size -1"),
    _case(TARGETS, "--size 100000", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w),
                                               "--size", "100000"], "--size 100000", "of memory on"),
    _case(TARGETS, "--limit -1", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w), "--limit", "-1"],
          "--limit", "at least 1"),
    _case(TARGETS, "--limit 0", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w), "--limit", "0"],
          "--limit"),
    _case(TARGETS, "--batch-size 0", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w),
                                                "--batch-size", "0"], "--batch-size"),
    _case(TARGETS, "--shard 3/2", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w), "--shard", "3/2"],
          "--shard 3/2"),
    _case(TARGETS, "--tv-weight nan", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w),
                                                 "--tv-weight", "nan"], "tv-weight"),
    _case(TARGETS, "a missing content folder", lambda w: ["--content-dir", w.base / "nope", "--out", w.base / "s", *_teacher(w)],
          "nope", "does not exist"),
    _case(TARGETS, "an empty content folder", lambda w: ["--content-dir", w.empty, "--out", w.base / "s", *_teacher(w)],
          "no image files"),
    _case(TARGETS, "a style that is not an image", lambda w: ["--content-dir", w.contents, "--out", w.base / "s",
                                                              *_teacher(w), "--style", w.notes], "notes.txt"),
    _case(TARGETS, "--content-mask-dir without --style-mask", lambda w: ["--content-dir", w.contents, "--out", w.base / "s",
                                                                          *_teacher(w), "--content-mask-dir", w.empty],
          "--style-mask is missing"),
    _case(TARGETS, "a missing mask folder", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w),
                                                       "--content-mask-dir", w.base / "nomasks", "--style-mask", w.style_mask],
          "nomasks", "no such folder"),
    _case(TARGETS, "a style mask of another photo", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w),
                                                               "--content-mask-dir", w.empty, "--style-mask", w.far_mask],
          "far_mask.png", "within 4 px"),
    _case(TARGETS, "--out is someone else's folder", lambda w: ["--content-dir", w.contents, "--out", w.unrelated, *_teacher(w)],
          "unrelated", "not a target store"),
    _case(TARGETS, "--out is a file", lambda w: ["--content-dir", w.contents, "--out", w.afile, *_teacher(w)],
          "--out", "is a file"),
    _case(TARGETS, "--out below a file", lambda w: ["--content-dir", w.contents, "--out", w.afile / "s", *_teacher(w)],
          "--out", "is a file, not a folder"),
    _case(TARGETS, "--out in an unwritable folder", lambda w: ["--content-dir", w.contents, "--out", w.readonly / "s",
                                                               *_teacher(w)], "--out", "permission denied",
          marks=needs_permissions),
    _case(TARGETS, "--summary-json is a folder", lambda w: ["--content-dir", w.contents, "--out", w.base / "s", *_teacher(w),
                                                            "--summary-json", w.empty], "--summary-json", "is a folder"),
    _case(TARGETS, "--verify on a folder that is not a store", lambda w: ["--out", w.unrelated, "--verify"],
          "not a target store"),
    # --- the fidelity report
    _case(COMPARE, "--out is someone else's folder", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store,
                                                                "--out", w.unrelated, "--device", "cpu"],
          "--out", "not empty and is not a fidelity report"),
    _case(COMPARE, "--out is the store", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out", w.store,
                                                    "--device", "cpu"], "--out", "input folder (--targets)"),
    _case(COMPARE, "--out is a file", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out", w.afile,
                                                 "--device", "cpu"], "--out", "is a file"),
    _case(COMPARE, "--out below a file", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out",
                                                    w.afile / "r", "--device", "cpu"], "--out", "is a file, not a folder"),
    _case(COMPARE, "--out in an unwritable folder", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out",
                                                               w.readonly / "r", "--device", "cpu"], "permission denied",
          marks=needs_permissions),
    _case(COMPARE, "a missing checkpoint", lambda w: ["--checkpoint", w.base / "nope.safetensors", "--targets", w.store,
                                                      "--out", w.base / "r", "--device", "cpu"], "nope.safetensors"),
    _case(COMPARE, "a checkpoint that is not one", lambda w: ["--checkpoint", w.notes, "--targets", w.store, "--out",
                                                              w.base / "r", "--device", "cpu"], "notes.txt"),
    _case(COMPARE, "a folder that is not a store", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.unrelated,
                                                              "--out", w.base / "r", "--device", "cpu"], "not a target store"),
    _case(COMPARE, "a store without targets", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out",
                                                         w.base / "r", "--device", "cpu"], "no teacher configs"),
    _case(COMPARE, "--max-images 0", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out", w.base / "r",
                                                "--max-images", "0"], "--max-images"),
    _case(COMPARE, "--heldout-fraction 2", lambda w: ["--checkpoint", w.checkpoint, "--targets", w.store, "--out",
                                                      w.base / "r", "--heldout-fraction", "2"], "--heldout-fraction"),
    _case(COMPARE, "--checkpoint best without --run", lambda w: ["--targets", w.store, "--out", w.base / "r"], "--run"),
    # --- export
    _case(EXPORT, "--out is a folder", lambda w: ["--checkpoint", w.checkpoint, "--format", "torchscript", "--out", w.empty],
          "--out", "is a folder"),
    _case(EXPORT, "--out below a file", lambda w: ["--checkpoint", w.checkpoint, "--format", "torchscript", "--out",
                                                   w.afile / "m.pt"], "--out", "is a file, not a folder"),
    _case(EXPORT, "--out is the checkpoint", lambda w: ["--checkpoint", w.checkpoint, "--format", "torchscript", "--out",
                                                        w.checkpoint], "--out", "same file as --checkpoint"),
    _case(EXPORT, "--out in an unwritable folder", lambda w: ["--checkpoint", w.checkpoint, "--format", "torchscript",
                                                              "--out", w.readonly / "m.pt"], "permission denied",
          marks=needs_permissions),
    _case(EXPORT, "a missing checkpoint", lambda w: ["--checkpoint", w.base / "nope.safetensors", "--format", "onnx",
                                                     "--out", w.base / "m.onnx"], "nope.safetensors", "no such"),
    _case(EXPORT, "a checkpoint that is not one", lambda w: ["--checkpoint", w.notes, "--format", "onnx", "--out",
                                                             w.base / "m.onnx"], "notes.txt"),
    _case(EXPORT, "a pickled checkpoint", lambda w: ["--checkpoint", w.pickle, "--format", "onnx", "--out", w.base / "m.onnx"],
          "student.pt", "never unpickled"),
    _case(EXPORT, "bf16 ONNX", lambda w: ["--checkpoint", w.checkpoint, "--format", "onnx", "--dtype", "bf16", "--out",
                                          w.base / "m.onnx"], "bf16 ONNX is not supported"),
    _case(EXPORT, "--tolerance nan", lambda w: ["--checkpoint", w.checkpoint, "--format", "torchscript", "--tolerance", "nan",
                                                "--out", w.base / "m.pt"], "--tolerance"),
    _case(EXPORT, "one check size", lambda w: ["--checkpoint", w.checkpoint, "--format", "torchscript", "--check-sizes", "40x40",
                                               "--out", w.base / "m.pt"], "two check sizes"),
    # --- a student on photos
    _case(STYLIZE, "--output is the input photo", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output", w.content],
          "content.png", "is the input image itself"),
    _case(STYLIZE, "--output folder holds the input photo", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output",
                                                                       w.base], "content.png", "is the input image itself"),
    _case(STYLIZE, "--output folder is the input folder", lambda w: ["--model", w.checkpoint, "--input", w.contents,
                                                                     "--output", w.contents], "is the input folder"),
    _case(STYLIZE, "an empty input folder", lambda w: ["--model", w.checkpoint, "--input", w.empty, "--output", w.base / "out"],
          "--input", "has no images"),
    _case(STYLIZE, "a missing input", lambda w: ["--model", w.checkpoint, "--input", w.base / "nope", "--output", w.base / "out"],
          "--input", "no such file or folder"),
    _case(STYLIZE, "--output below a file", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output",
                                                       w.afile / "o.png"], "--output", "is a file, not a folder"),
    _case(STYLIZE, "--output with an unknown suffix", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output",
                                                                 w.base / "o.xyz"], "unsupported output suffix '.xyz'"),
    _case(STYLIZE, "--output in an unwritable folder", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output",
                                                                  w.readonly / "o.png"], "permission denied",
          marks=needs_permissions),
    _case(STYLIZE, "a missing model", lambda w: ["--model", w.base / "nope.onnx", "--input", w.content, "--output",
                                                 w.base / "o.png"], "nope.onnx", "no such model file"),
    _case(STYLIZE, "a model that is not one", lambda w: ["--model", w.notes, "--input", w.content, "--output", w.base / "o.png"],
          "notes.txt"),
    _case(STYLIZE, "a pickled model", lambda w: ["--model", w.pickle, "--input", w.content, "--output", w.base / "o.png"],
          "student.pt", "never unpickled"),
    _case(STYLIZE, "--batch-size 0", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output", w.base / "o.png",
                                                "--batch-size", "0"], "--batch-size"),
    _case(STYLIZE, "--tile 0", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output", w.base / "o.png",
                                          "--tile", "0"], "--tile"),
    _case(STYLIZE, "--overlap without --tile", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output",
                                                          w.base / "o.png", "--overlap", "8"], "--overlap needs --tile"),
    _case(STYLIZE, "--pixel-budget 0", lambda w: ["--model", w.checkpoint, "--input", w.content, "--output", w.base / "o.png",
                                                  "--pixel-budget", "0"], "--pixel-budget"),
    _case(STYLIZE, "photos too large to stylise whole", lambda w: ["--model", w.checkpoint, "--input", w.big, "--output",
                                                                   w.base / "out", "--batch-size", "16",
                                                                   "--pixel-budget", "100000000", "--device", "cpu"],
          "10000x10000 px in one piece", "of memory on cpu", "--tile"),
]


@pytest.mark.parametrize(("script", "args", "expected", "code"), BAD_INPUTS)
def test_a_bad_input_is_one_line_and_changes_nothing(runner, world, script, args, expected, code):
    before = _snapshot(world.base)
    result = runner.run(script, *args(world), cwd=world.base)
    assert result.rc == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.err_lines) == 1, result.stderr
    line = result.err_lines[0]
    assert line.startswith("error: "), line
    for text in expected:
        assert text in line, line
    assert _snapshot(world.base) == before  # nothing written, nothing left behind, nothing overwritten


#: One bad input per script, run as a real process: what the forking runner shows is what a user sees.
REAL_PROCESS_CASES = [
    pytest.param(case.values[0], case.values[1], id=case.id)
    for case in BAD_INPUTS
    if case.id in ("stylize_gatys: --size 0", "generate_targets: --limit -1", "compare: --out is someone else's folder",
                   "export_student: --out is a folder", "stylize: --output is the input photo")
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args"), REAL_PROCESS_CASES)
def test_a_real_process_prints_the_same_line(runner, world, script, args):
    before = _snapshot(world.base)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / script), *map(str, args(world))]
    real = subprocess.run(command, cwd=world.base, env=env, capture_output=True, text=True, timeout=300)
    forked = runner.run(script, *args(world), cwd=world.base)
    assert (real.returncode, real.stderr, real.stdout) == (forked.rc, forked.stderr, forked.stdout) == (2, forked.stderr, "")
    assert len(forked.err_lines) == 1
    assert _snapshot(world.base) == before


@pytest.mark.parametrize("script", [TEACHER, TARGETS, COMPARE, EXPORT, STYLIZE, "train_student.py"])
def test_every_script_has_debug(runner, world, script):
    result = runner.run(script, "--help", cwd=world.base)
    assert result.rc == 0 and "--debug" in result.stdout


def test_debug_shows_the_traceback_of_a_bad_input(runner, world):
    result = runner.run(TEACHER, "--content", world.content, "--output", world.base / "o.png", *_teacher(world),
                        "--size", "100000", "--debug", cwd=world.base)
    assert result.rc == 1  # the interpreter's code for an uncaught exception
    assert "Traceback" in result.stderr and "TeacherInputError: --size 100000" in result.stderr
    assert not (world.base / "o.png").exists()


def test_an_earlier_report_may_be_replaced_but_no_other_folder(tmp_path):
    report = tmp_path / "report"
    (report / "images").mkdir(parents=True)
    (report / "report.json").write_text(json.dumps({"format": REPORT_FORMAT, "version": 1}))
    (report / "grid.png").write_bytes(b"")
    (report / ".index.html.tmp.1a2b3c4d.html").write_bytes(b"")  # left by a killed run
    assert is_report_folder(report)
    assert check_output_folder(report, option="--out", ours=is_report_folder) == report
    (report / "grid.png").unlink()
    (report / "report.json").unlink()
    assert is_report_folder(report)  # a run killed before its report.json: still ours
    (report / "report.json").write_text(json.dumps({"format": "someone else's"}))
    assert not is_report_folder(report)
    (report / "report.json").unlink()
    (report / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="not empty and is not a fidelity report folder"):
        check_output_folder(report, option="--out", ours=is_report_folder, what="fidelity report")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own guard; the command line quiets it
def test_a_photo_too_large_to_stylise_whole_points_to_tiles(tmp_path, world, monkeypatch):
    model = load_model(world.checkpoint)
    big = _png_header_only(tmp_path / "big.png", 10_000, 10_000)  # 100 MP by its header
    monkeypatch.setattr(deploy_stylize, "memory_capacity", lambda device: 5 * 10**9)
    with pytest.raises(StylizeInputError, match=r"big\.png: stylising 10000x10000 px in one piece needs about 38\.7 GB, "
                       r"more than the 5\.0 GB of memory on cpu; pass --tile 1024 to stylise in tiles"):
        deploy_stylize.check_memory(model, [big], pixel_budget=10**9)
    deploy_stylize.check_memory(model, [big], tile=1024)  # 1024 px tiles fit
    deploy_stylize.check_memory(model, [big])  # the default budget tiles it too
    monkeypatch.setattr(deploy_stylize, "memory_capacity", lambda device: 10**9)
    with pytest.raises(StylizeInputError, match="too large for this machine even in tiles"):
        deploy_stylize.check_memory(model, [big], tile=1024)
