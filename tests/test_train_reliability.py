"""Training when files are broken, foreign or cut short: one error line, nothing overwritten, exact resumes.

CPU, random weights, 32 px (the store of tests/test_train.py, made by the test). In-process
runs of the command (``scripts/train_student.py``'s ``main``) share one criterion; the
fault-injection runs are separate processes killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import distill.targets.pairs as pairs_module
import distill.train.loop as loop_module
from distill.targets.pairs import TargetPairs
from distill.targets.store import TargetStore
from distill.train.config import resolve_config
from distill.train.data import open_store
from distill.train.loop import train
from distill.train.runfiles import RunStateError, read_state
from students import load_student
from test_train import ROOT, SharedCriterionStore, _load_script, records, store, store_root, tiny  # noqa: F401

#: The command-line form of test_train.tiny(): johnson with one residual block, 32 px crops, CPU.
TINY_ARGS = [
    "--student", "johnson", "--student-kwargs", '{"num_residual_blocks": 1}', "--batch-size", "2",
    "--crop-size", "32", "--eval-size", "32", "--warmup-steps", "0", "--lr", "1e-3", "--log-interval", "1",
    "--eval-interval", "1000", "--image-interval", "1000", "--checkpoint-interval", "1000", "--device", "cpu",
    "--no-progress", "--set", "eval_max_images=2",
]


@pytest.fixture
def command(store, store_root, monkeypatch, capsys):
    """Run the command in-process (the shared store for ``store_root``): ``command(*args) -> (exit code, stdout, stderr)``."""
    script = _load_script()
    monkeypatch.setattr(loop_module, "open_store",
                        lambda path: store if Path(path) == store_root.resolve() else open_store(path))

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = script.main([str(a) for a in args])
        except SystemExit as exit_:  # a bad option (argparse)
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_error_line(err: str) -> str:
    """The one ``error:`` line on stderr (and nothing else: no traceback, no warning)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its bytes (folders as ``<dir>``)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(path.relative_to(folder)): "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


def state_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


def same_weights(a: Path, b: Path) -> bool:
    first, _ = load_student(a)
    second, _ = load_student(b)
    return all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())


@pytest.fixture(scope="module")
def saved_runs(store, store_root, tmp_path_factory) -> dict[str, Path]:
    """Runs to copy: "one" saved a state once (only last_state.pt, as runs of earlier versions);
    "two" saved twice (last_state.pt at step 2, previous_state.pt at step 1); "three" ran
    3 steps straight (the reference for resuming "two" to step 3)."""
    base = tmp_path_factory.mktemp("saved_runs")
    # A constant learning rate: the cosine schedule's horizon is the run's length, and "two" is resumed to 3 steps.
    train(tiny(store_root, steps=1, schedule="constant"), base / "one", store=store, progress=False)
    train(tiny(store_root, steps=2, checkpoint_interval=1, schedule="constant"), base / "two", store=store, progress=False)
    train(tiny(store_root, steps=3, checkpoint_interval=1, schedule="constant"), base / "three", store=store, progress=False)
    return {name: base / name for name in ("one", "two", "three")}


class Hostile:
    """Unpickling this would create ``marker``: the state loader must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def break_state(path: Path, kind: str, marker: Path) -> None:
    """Make ``path`` an unusable training state of the given ``kind``."""
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":  # a torch file, but none of our keys
        torch.save({"state_dict": {"weight": torch.zeros(3)}}, path)
    elif kind == "hostile":  # a torch file whose pickle would run code
        torch.save({"step": 1, "payload": Hostile(marker)}, path)
    elif kind == "hostile_pickle":  # a plain pickle (the legacy torch format) that would run code
        path.write_bytes(pickle.dumps({"step": 1, "payload": Hostile(marker)}))
    else:
        raise AssertionError(kind)


BROKEN = ("empty", "truncated", "foreign", "hostile", "hostile_pickle")


# --------------------------------------------------------------------------- 1. broken last_state.pt


@pytest.mark.parametrize("kind", BROKEN)
def test_resume_with_a_broken_state_is_one_line_naming_it(kind, saved_runs, command, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_runs["one"], run)
    state = run / "checkpoints" / "last_state.pt"
    marker = tmp_path / "code_ran"
    break_state(state, kind, marker)
    before = snapshot(run)
    code, out, err = command("--out", run, "--resume", "--steps", "2", "--no-progress")
    line = one_error_line(err)
    assert code == 2 and str(state) in line and "previous_state.pt" in line, line
    if kind == "hostile":
        assert "pickled Python objects" in line and "weights_only" not in line
    if kind == "hostile_pickle":
        assert "a bare pickle, not a torch zip file" in line
    assert not marker.exists(), "the state's pickle was executed"
    assert snapshot(run) == before  # nothing written, nothing overwritten
    with pytest.raises(RunStateError, match=str(state)):
        read_state(state)
    assert not marker.exists()


def test_a_saved_state_loads_with_weights_only(saved_runs):
    """Every value of a state is a tensor or a plain container: ``weights_only`` loads it, also with torch's own loader."""
    path = saved_runs["one"] / "checkpoints" / "last_state.pt"
    state = read_state(path)
    assert state["step"] == 1 and state["config"]["steps"] == 1
    assert torch.load(path, map_location="cpu", weights_only=True)["rng"]["torch"].dtype == torch.uint8


# --------------------------------------------------------------------------- 2. two states kept, fall back


def test_two_states_are_kept_and_resume_falls_back_to_the_older(saved_runs, command, tmp_path):
    checkpoints = saved_runs["two"] / "checkpoints"
    assert (state_step(checkpoints / "last_state.pt"), state_step(checkpoints / "previous_state.pt")) == (2, 1)
    run = tmp_path / "run"
    shutil.copytree(saved_runs["two"], run)
    newest = run / "checkpoints" / "last_state.pt"
    break_state(newest, "truncated", tmp_path / "unused")
    code, out, err = command("--out", run, "--resume", "--steps", "3", "--no-progress")
    assert code == 0 and err == "", err
    warnings = [line for line in out.splitlines() if "older state" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: ") and str(newest) in warnings[0], out
    assert "previous_state.pt (step 1)" in warnings[0] and "resuming at step 1" in out
    # The run continued from step 1 exactly: the same weights as three steps straight.
    assert same_weights(run / "checkpoints" / "last.safetensors", saved_runs["three"] / "checkpoints" / "last.safetensors")
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    # The unusable file was replaced, never rotated in: the older state stays a good one.
    assert (state_step(newest), state_step(run / "checkpoints" / "previous_state.pt")) == (3, 2)


def test_both_states_broken_is_one_line_naming_both(saved_runs, command, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_runs["two"], run)
    newest, older = run / "checkpoints" / "last_state.pt", run / "checkpoints" / "previous_state.pt"
    marker = tmp_path / "code_ran"
    break_state(newest, "empty", marker)
    break_state(older, "hostile", marker)
    before = snapshot(run)
    code, out, err = command("--out", run, "--resume", "--steps", "3", "--no-progress")
    line = one_error_line(err)
    assert code == 2 and str(newest) in line and str(older) in line, line
    assert not marker.exists() and snapshot(run) == before


# --------------------------------------------------------------------------- 3. --out that is not a run


@pytest.mark.parametrize("what", ["user_files", "foreign_config", "a_file"])
def test_new_run_refuses_a_folder_that_is_not_a_run_before_any_work(what, store_root, command, monkeypatch, tmp_path):
    out_dir = tmp_path / "out"
    if what == "a_file":
        out_dir.write_text("not a folder\n")
    else:
        out_dir.mkdir()
        if what == "user_files":
            (out_dir / "holiday.jpg").write_bytes(b"\xff\xd8 my photo")
            (out_dir / "checkpoints").mkdir()
        else:  # a user's own settings file, not one a run wrote
            (out_dir / "config.yaml").write_text("# my settings\nlr: 1e-3\n")
    before = snapshot(out_dir)

    def no_work(path):
        raise AssertionError("the store was opened before the run folder was checked")

    monkeypatch.setattr(loop_module, "open_store", no_work)
    code, out, err = command("--targets", store_root, "--out", out_dir, "--steps", "1", *TINY_ARGS)
    line = one_error_line(err)
    assert code == 2 and str(out_dir) in line, line
    assert ("is a file" in line) if what == "a_file" else ("not a training run" in line and "empty or new folder" in line)
    assert snapshot(out_dir) == before


def test_new_run_accepts_a_run_folder_that_never_saved_a_state(saved_runs, store_root, command, tmp_path):
    """A run killed before its first checkpoint leaves config.yaml, metrics and logs: starting again there is fine."""
    run = tmp_path / "run"
    shutil.copytree(saved_runs["one"], run)
    for state in (run / "checkpoints").glob("*_state.pt"):
        state.unlink()
    code, out, err = command("--targets", store_root, "--out", run, "--steps", "1", *TINY_ARGS)
    assert code == 0, err
    code, out, err = command("--targets", store_root, "--out", run, "--steps", "1", *TINY_ARGS)
    assert code == 2 and "--resume" in one_error_line(err)  # now it holds a run


# --------------------------------------------------------------------------- 3. early failures leave nothing


@pytest.mark.parametrize("where", ["new_nested", "existing_empty"])
def test_a_run_that_fails_early_leaves_no_half_made_folder(where, store, store_root, command, monkeypatch, tmp_path):
    parent = tmp_path / "runs"
    out_dir = parent / "a" / "b" / "run" if where == "new_nested" else parent / "run"
    if where == "existing_empty":
        out_dir.mkdir(parents=True)
    # A bad store and a bad setting stop the run before anything is made.
    code, _, err = command("--targets", tmp_path / "no_store", "--out", out_dir, "--steps", "1", *TINY_ARGS)
    assert code == 2 and "no_store" in one_error_line(err)
    code, _, err = command("--targets", store_root, "--out", out_dir, "--steps", "1", *TINY_ARGS, "--set", "lr=fast")
    assert code == 2 and "'lr'" in one_error_line(err)
    # A changed target is found when step 1 reads it, after the run folder was made: it is removed again.
    bad = corrupted_store(store, store_root, tmp_path)
    monkeypatch.setattr(loop_module, "open_store", lambda path: bad)
    code, out, err = command("--targets", bad.root, "--out", out_dir, "--steps", "2", *TINY_ARGS)
    line = one_error_line(err)
    assert code == 2 and str(bad.root / "targets") in line and "generate_targets.py --verify" in line, line
    if where == "new_nested":
        assert not parent.exists()  # every folder this run made is gone
    else:
        assert out_dir.is_dir() and not any(out_dir.iterdir())  # the user's folder stays, empty


# --------------------------------------------------------------------------- 4. target hashes, torn manifests


def corrupted_store(store, store_root: Path, tmp_path: Path) -> SharedCriterionStore:
    """A copy of the store whose target files were changed after generation (one pixel each)."""
    root = tmp_path / "store"
    shutil.copytree(store_root, root)
    for target in sorted((root / "targets").rglob("*.png")):
        array = np.array(Image.open(target))
        array[0, 0, 0] ^= 1
        Image.fromarray(array).save(target)
    copy = SharedCriterionStore(TargetStore(root))
    copy._cache = store._cache  # the same teacher config: reuse the built criterion
    return copy


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_target_changed_after_generation_is_refused(num_workers, store, store_root, tmp_path):
    bad = corrupted_store(store, store_root, tmp_path)
    config = tiny(bad.root, steps=2, num_workers=num_workers)
    with pytest.raises(Exception) as caught:
        train(config, tmp_path / "run", store=bad, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "differs from the store's manifest" in message, message
    assert str(bad.root / "targets") in message and "--verify" in message
    assert not (tmp_path / "run").exists()


def test_each_file_is_hashed_once(store, monkeypatch):
    calls: list[Path] = []
    original = pairs_module.sha256_file
    monkeypatch.setattr(pairs_module, "sha256_file", lambda path: calls.append(Path(path)) or original(path))
    pairs = TargetPairs(store, split="all", verify=True)
    for _ in range(3):
        for i in range(len(pairs)):
            pairs[i]
    assert len(calls) == len(set(calls)) == 2 * len(pairs)  # a content image and a target per entry, once each
    unchecked = TargetPairs(store, split="all")
    calls.clear()
    unchecked[0]
    assert calls == []  # other readers of the store do not pay for it


def test_torn_manifest_lines_are_reported_in_one_line(store, store_root, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store_root, root)
    manifest = sorted((root / "manifest").rglob("*.jsonl"))[0]
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write('{"v": 1, "key": "torn\n{"v": 1, "ke')  # a line cut short, then a writer killed mid-line
    copy = SharedCriterionStore(TargetStore(root))
    copy._cache = store._cache
    lines: list[str] = []
    result = train(tiny(root, steps=1), tmp_path / "run", store=copy, progress=False, log=lines.append)
    assert result.step == 1
    torn = [line for line in lines if "torn" in line]
    assert len(torn) == 1 and torn[0].startswith("WARNING: 2 torn manifest line(s)"), lines
    assert f"2 in {manifest}" in torn[0] and "--verify" in torn[0]


# --------------------------------------------------------------------------- 5. config errors


def test_config_errors_name_the_key_the_value_and_the_type(store_root, command, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1e-3\nsteps: 1e4\nweight_decay: 5E-5\n")
    config = resolve_config(config_file=good)
    assert (config.lr, config.steps, config.weight_decay) == (0.001, 10000, 5e-5) and type(config.steps) is int
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: two\n")
    out_dir = tmp_path / "run"
    code, _, err = command("--targets", store_root, "--out", out_dir, "--config", bad)
    line = one_error_line(err)
    assert code == 2 and str(bad) in line and "'batch_size': expected int, got 'two' (str)" in line, line
    code, _, err = command("--targets", store_root, "--out", out_dir, *TINY_ARGS, "--steps", "2.5")
    assert code == 2 and "--steps: expected an integer, got '2.5'" in one_error_line(err)
    code, _, err = command("--targets", store_root, "--out", out_dir, *TINY_ARGS, "--set", "steps=1e4", "--set", "grad_clip=-1")
    assert code == 2 and "grad_clip must be >= 0, got -1.0" in one_error_line(err)
    code, _, err = command("--targets", store_root, "--out", out_dir, *TINY_ARGS, "--student-kwargs", "{oops")
    assert code == 2 and "--student-kwargs: not valid JSON" in one_error_line(err)
    assert not out_dir.exists()
    args = _load_script().build_parser().parse_args(["--out", "x", "--steps", "1e4", "--lr", "1e-3"])
    assert (args.steps, args.lr) == (10000, 0.001)


# --------------------------------------------------------------------------- fault injection: SIGKILL, then --resume

#: Run the command in this process after arranging for it to SIGKILL itself at one moment:
#: argv = [point, step, command options...].
KILLER = textwrap.dedent('''
    import os, signal, sys
    import torch
    import distill.core.files as files
    import distill.train.loop as loop
    from distill.cli.train import main

    point, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "during_step":  # in step `at`, after its forward pass, before the update
        backward_step, calls = loop.backward_step, []
        def hooked(*args, **kwargs):
            calls.append(1)
            if len(calls) == at:
                die()
            return backward_step(*args, **kwargs)
        loop.backward_step = hooked
    elif point == "after_checkpoint":  # right after the state of step `at` was saved
        save_state = loop.save_state
        def hooked(path, student, optimizer, scaler, config, step, *args, **kwargs):
            save_state(path, student, optimizer, scaler, config, step, *args, **kwargs)
            if step == at:
                die()
        loop.save_state = hooked
    elif point == "while_saving_state":  # half of the state of step `at` written to its temporary file
        save = torch.save
        def hooked(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(obj, dict) and obj.get("step") == at and "optimizer" in obj:
                os.truncate(f, os.path.getsize(f) // 2)
                die()
        torch.save = hooked
    elif point == "between_renames":  # last_state.pt moved to previous_state.pt, the new one not yet in place
        rename = os.replace
        def hooked(src, dst):
            rename(src, dst)
            if str(dst).endswith("previous_state.pt"):
                die()
        files.os.replace = hooked
    sys.exit(main(argv))
''')

#: point: (its step, the steps of last_state.pt and previous_state.pt it leaves (0: none), the step --resume starts at).
#: States are saved at steps 2, 4 and 6; the one of step 2 is the first to be moved to previous_state.pt.
KILL_POINTS = {
    "during_step": (3, (2, 0), 2),
    "after_checkpoint": (4, (4, 2), 4),
    "while_saving_state": (4, (2, 0), 2),
    "between_renames": (4, (0, 2), 2),
}


def _fault_args(store_root: Path, run: Path) -> list[str]:
    return ["--targets", str(store_root), "--out", str(run), "--steps", "6", *TINY_ARGS,
            "--checkpoint-interval", "2", "--eval-interval", "3", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def uninterrupted(store, store_root, tmp_path_factory, single_thread) -> Path:
    """The run the killed ones must end up as, straight through (in-process: one thread, like the killed processes)."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    script = _load_script()
    args = script.build_parser().parse_args(_fault_args(store_root, run))
    train(resolve_config(overrides=script.overrides_from(args)), run, store=store, progress=False)
    return run


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_the_uninterrupted_weights(point, store_root, uninterrupted, command, single_thread,
                                                             tmp_path):
    at, left, resumed_from = KILL_POINTS[point]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, str(killer), point, str(at), *_fault_args(store_root, run)],
                            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    checkpoints = run / "checkpoints"
    states = tuple(state_step(path) if path.exists() else 0
                   for path in (checkpoints / "last_state.pt", checkpoints / "previous_state.pt"))
    assert states == left
    if point == "while_saving_state":
        assert list(checkpoints.glob(".last_state.pt.tmp.*"))  # the half-written state, never read
    code, out, err = command("--out", run, "--resume", "--no-progress")
    assert code == 0 and err == "", err
    assert f"resuming at step {resumed_from}" in out
    fell_back = [line for line in out.splitlines() if "older state" in line]
    assert len(fell_back) == (point == "between_renames"), out
    assert same_weights(checkpoints / "last.safetensors", uninterrupted / "checkpoints" / "last.safetensors")
    assert same_weights(checkpoints / "best.safetensors", uninterrupted / "checkpoints" / "best.safetensors")
    straight, resumed = records(uninterrupted), records(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["objective"] for r in resumed] == [r["objective"] for r in straight]
    assert (state_step(checkpoints / "last_state.pt"), state_step(checkpoints / "previous_state.pt")) == (6, 4)
