"""Target store: resumable, sharded generation and the read API (CPU, random weights, tiny images)."""

from __future__ import annotations

from distill.core.config import replace as config_replace
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import teachers.gatys
from distill.core.files import sha256_file
from distill.objective.criterion import build_criterion
from distill.core.imageio import load_image
from distill.core.errors import StoreError
from distill.targets.store import TargetEntry, TargetStore
from distill.targets.pairs import TargetPairs, heldout_keys, split_value
from distill.targets.locks import KeyLocks as _KeyLocks
from distill.targets.generation import generate_targets, shard_of
from distill.objective.config import CriterionConfig
from teachers.gatys import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "generate_targets.py"
FAST = ["--size", "32", "--iters", "3", "--weights", "random", "--style-size", "32", "--device", "cpu", "--quiet"]


def _script():
    spec = importlib.util.spec_from_file_location("generate_targets_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _script()


def cli(*args: str | os.PathLike) -> int:
    return GENERATE.main([str(a) for a in args])


def write_image(path: Path, height: int, width: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def make_contents(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    # Two aspect ratios (two teacher shapes) and a sub-folder, to exercise grouping and the recursive walk.
    paths = []
    for i in range(count):
        name = f"sub/img{i}.jpg" if i % 3 == 2 else f"img{i}.png"
        height = 40 if i % 2 else 48
        paths.append(write_image(folder / name, height, 44, seed * 1000 + i))
    return paths


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Path:
    return write_image(tmp_path_factory.mktemp("style") / "style.png", 40, 36, 999)


def manifest_lines(store: Path) -> list[dict]:
    lines = []
    for path in sorted(store.glob("manifest/*/*.jsonl")):
        for raw in path.read_bytes().splitlines(keepends=True):
            if raw.endswith(b"\n"):
                lines.append(json.loads(raw))
    return lines


def mtimes(store: Path) -> dict[str, int]:
    # Keyed by config folder and file: two configs hold targets of the same name.
    return {p.relative_to(store).as_posix(): p.stat().st_mtime_ns for p in store.glob("targets/*/*.png")}


@pytest.mark.slow
def test_generate_read_api_and_rerun_skips(tmp_path, style, monkeypatch, capsys):
    contents = make_contents(tmp_path / "c", 4)
    out = tmp_path / "store"
    config = TeacherConfig(
        size=32, iterations=3, criterion=config_replace(TeacherConfig().criterion, weights="random", style_size=32)
    )
    seen: list[torch.Tensor] = []
    real = teachers.gatys.stylize

    def spy(criterion, content, **kwargs):
        seen.extend(content.cpu())
        return real(criterion, content, **kwargs)

    monkeypatch.setattr(teachers.gatys, "stylize", spy)
    summary = generate_targets(
        content_dir=tmp_path / "c", style_paths=[style], store_root=out, teacher_config=config, batch_size=2
    )
    assert (summary.new, summary.present, summary.skipped, len(summary.failed)) == (4, 0, 0, 0)
    assert summary.random_weights and "random" in summary.weights
    assert any("RANDOM" in line for line in summary.lines())

    store = TargetStore(out)
    assert store.config_hashes() == [summary.config_hash]
    assert store.teacher_config() == config.resolved()  # the store records what ran, with no "auto" left
    entries = store.entries()
    assert len(entries) == 4 and [e.content_hash for e in entries] == sorted(e.content_hash for e in entries)
    assert {e.content_path for e in entries} == {str(p) for p in contents}
    assert len({e.key for e in entries}) == 4
    for entry in entries:
        assert entry.target_path.is_absolute() and entry.content_image_path.is_absolute()
        content, target = load_image(entry.content_image_path), load_image(entry.target_path)
        assert content.shape == target.shape and max(content.shape[-2:]) == 32
        # The content copy is exactly the tensor the teacher started from (lossless PNG of 8-bit values).
        assert any(torch.equal(content, s) for s in seen)
        assert set(entry.final) == {"total", "content", "style", "tv", "photoreal"}
        assert len(entry.trace["total"]) == entry.iterations_run + 1 == 4
        assert entry.seconds > 0 and entry.batch_size == 2 and entry.device == "cpu" and "random" in entry.weights
    assert all(e.trace == {} for e in store.entries(traces=False))  # the cheap listing TargetPairs uses
    assert [store.trace(e) for e in store.entries(traces=False)] == [e.trace for e in entries]
    # The store's criterion is exactly the teacher's: same style targets, same objective.
    rebuilt = store.build_criterion()
    reference = build_criterion(config.criterion, [load_image(style)], network=rebuilt.network)
    for layer in reference.style_layers:
        assert torch.equal(rebuilt.target_gram(layer), reference.target_gram(layer))
    assert torch.equal(store.style_images()[0], load_image(style))

    # Rerun: nothing recomputed, the teacher is not even called, files untouched.
    before = mtimes(out)
    monkeypatch.setattr(teachers.gatys, "stylize", lambda *a, **k: pytest.fail("teacher called on a rerun"))
    capsys.readouterr()
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--out", out, "--batch-size", "2", *FAST) == 0
    printed = capsys.readouterr().out
    assert "new targets:        0" in printed and "already present:    4" in printed and "RANDOM" in printed
    assert mtimes(out) == before
    assert len(manifest_lines(out)) == 4


def test_config_change_adds_targets_and_keeps_old(tmp_path, style):
    make_contents(tmp_path / "c", 2)
    out = tmp_path / "store"
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST) == 0
    first = mtimes(out)
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST, "--tv-weight", "5") == 0
    store = TargetStore(out)
    hashes = store.config_hashes()
    assert len(hashes) == 2
    for config_hash in hashes:
        assert len(store.entries(config_hash)) == 2
        assert len(store.entries(config_hash[:16])) == 2  # a key's prefix resolves
    assert {store.teacher_config(h).criterion.tv_weight for h in hashes} == {0.0, 5.0}  # 0 is the default
    after = mtimes(out)
    assert all(after[name] == stamp for name, stamp in first.items())
    with pytest.raises(StoreError, match="2 teacher configs"):
        store.entries()


@pytest.mark.slow
def test_kill_9_then_rerun_completes_without_recomputing(tmp_path, style):
    make_contents(tmp_path / "c", 6)
    out = tmp_path / "store"
    args = ["--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST, "--iters", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not manifest_lines(out):
            assert proc.poll() is None, "the run ended before writing a target"
            assert time.monotonic() < deadline, "no target within 120 s"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    finished = {line["key"] for line in manifest_lines(out)}
    assert 1 <= len(finished) < 6
    store = TargetStore(out)
    stamps = {e.key: e.target_path.stat().st_mtime_ns for e in store.entries()}

    assert cli(*args) == 0  # the same command
    entries = store.entries()
    assert len(entries) == 6
    assert store.verify().ok
    keys = [line["key"] for line in manifest_lines(out)]
    assert len(keys) == len(set(keys)) == 6  # each target recorded once: none recomputed
    for entry in entries:
        if entry.key in stamps:
            assert entry.target_path.stat().st_mtime_ns == stamps[entry.key]


def _kill_generation_when(args: list, ready, *, timeout: float = 120) -> None:
    """Run generate_targets.py in its own process and SIGKILL it as soon as ``ready()`` holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def _target_bytes(store_root: Path) -> dict[str, bytes]:
    """Each target's image bytes by its content hash (the keys name content and config)."""
    return {entry.content_hash: entry.target_path.read_bytes() for entry in TargetStore(store_root).entries()}


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["while the first batch is optimised", "after two targets"])
def test_kill_9_at_several_moments_then_rerun_gives_the_uninterrupted_store(tmp_path, style, moment, single_thread):
    # One thread here as in the killed process: matrix products block differently per thread
    # count, and L-BFGS carries a last-bit difference into the saved pixels.
    make_contents(tmp_path / "c", 4)
    common = ["--content-dir", tmp_path / "c", "--style", style, *FAST, "--iters", "8"]
    assert cli(*common, "--out", tmp_path / "straight") == 0
    out = tmp_path / "killed"
    if moment == "after two targets":
        _kill_generation_when([*common, "--out", out], lambda: len(manifest_lines(out)) >= 2)
    else:  # a lock is held while a target is computed, and none is finished yet
        _kill_generation_when([*common, "--out", out],
                              lambda: any(out.rglob("*.lock")) and not manifest_lines(out))
    assert cli(*common, "--out", out) == 0  # the same command
    assert TargetStore(out).verify().ok
    assert _target_bytes(out) == _target_bytes(tmp_path / "straight")


def test_shards_are_disjoint_and_cover_everything(tmp_path, style, monkeypatch):
    make_contents(tmp_path / "c", 6)
    out = tmp_path / "store"
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST, "--shard", "0/2") == 0
    part0 = {line["content_hash"] for line in manifest_lines(out)}
    # The second shard comes from torchrun's environment.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST) == 0
    part1 = {line["content_hash"] for line in manifest_lines(out)} - part0
    assert part0 and part1 and not part0 & part1
    assert all(shard_of(h, 2) == 0 for h in part0) and all(shard_of(h, 2) == 1 for h in part1)
    assert len(TargetStore(out).entries()) == 6 == len(part0 | part1)
    assert len(manifest_lines(out)) == 6


def test_bad_content_files_are_skipped_and_counted(tmp_path, style, capsys):
    folder = tmp_path / "c"
    make_contents(folder, 2)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    good = (folder / "img0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    write_image(folder / "tiny.png", 12, 40, 5)
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "store"
    assert cli("--content-dir", folder, "--style", style, "--out", out, *FAST) == 0
    captured = capsys.readouterr()
    for name in ("empty.png", "notes.jpg", "truncated.png", "tiny.png"):
        assert sum(name in line and "skipped" in line for line in captured.err.splitlines()) == 1, name
    assert "skipped bad files:  4" in captured.out and "new targets:        2" in captured.out
    assert len(TargetStore(out).entries()) == 2


@pytest.mark.parametrize("problem", ["missing", "garbage"])
def test_bad_style_stops_before_any_work(tmp_path, style, problem, capsys):
    make_contents(tmp_path / "c", 1)
    bad = tmp_path / "style.jpg"
    if problem == "garbage":
        bad.write_text("not an image")
    out = tmp_path / "store"
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--style", bad, "--out", out, *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "style" in err[0] and str(bad) in err[0]
    assert not out.exists()


def test_bad_content_folder_is_a_clear_error(tmp_path, style, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    for folder, message in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "no image files")):
        assert cli("--content-dir", folder, "--style", style, "--out", tmp_path / "s", *FAST) == 2
        assert message in capsys.readouterr().err


def test_verify_finds_corrupt_and_missing_files_and_rerun_repairs(tmp_path, style, capsys):
    make_contents(tmp_path / "c", 3)
    out = tmp_path / "store"
    args = ["--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST]
    assert cli(*args) == 0
    assert cli("--out", out, "--verify") == 0
    entries = TargetStore(out).entries()
    entries[0].target_path.write_bytes(b"garbage")
    entries[1].content_image_path.unlink()
    capsys.readouterr()
    assert cli("--out", out, "--verify") == 1
    printed = capsys.readouterr().out
    assert f"corrupt target: {entries[0].target_path}" in printed
    assert f"missing content image: {entries[1].content_image_path}" in printed
    report = TargetStore(out).verify()
    assert (len(report.corrupt), len(report.missing)) == (1, 1)
    # Deleting the bad file and rerunning recomputes exactly the damaged entries.
    entries[0].target_path.unlink()
    assert cli(*args) == 0
    assert "new targets:        2" in capsys.readouterr().out
    assert TargetStore(out).verify().ok
    assert cli("--out", tmp_path / "c", "--verify") == 2  # not a store


def test_torn_manifest_line_is_ignored(tmp_path, style):
    make_contents(tmp_path / "c", 2)
    out = tmp_path / "store"
    args = ["--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST]
    assert cli(*args) == 0
    (manifest,) = out.glob("manifest/*/*.jsonl")
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[0] + lines[1][:50])  # as if killed while writing the second line
    store = TargetStore(out)
    assert len(store.entries()) == 1
    assert store.verify().torn_lines == 1
    assert cli(*args) == 0
    assert len(store.entries()) == 2 and store.verify().ok


def test_target_locked_by_another_writer_is_left_to_it(tmp_path, style):
    make_contents(tmp_path / "c", 2)
    out = tmp_path / "store"
    config = GENERATE.teacher_config_from_args(GENERATE.build_parser().parse_args(["--out", str(out), *FAST]))
    kwargs = dict(content_dir=tmp_path / "c", style_paths=[style], store_root=out, teacher_config=config)
    store, config_hash = TargetStore.open_or_create(out, teacher_config=config, style_paths=[style])
    locked = sha256_file(tmp_path / "c" / "img0.png")
    other = _KeyLocks(out / "locks" / config_hash)  # flock conflicts between open files even in one process
    assert other.acquire(locked)
    summary = generate_targets(**kwargs)
    assert (summary.new, summary.busy) == (1, 1)
    other.release_all()
    summary = generate_targets(**kwargs)
    assert (summary.new, summary.present) == (1, 1)


def test_target_pairs_split_and_resize(tmp_path, style):
    make_contents(tmp_path / "c", 5)
    out = tmp_path / "store"
    assert cli("--content-dir", tmp_path / "c", "--style", style, "--out", out, *FAST) == 0
    store = TargetStore(out)
    train, heldout, everything = (TargetPairs(store, split=s) for s in ("train", "heldout", "all"))
    train_keys = {train.entry(i).key for i in range(len(train))}
    heldout_keys_ = {heldout.entry(i).key for i in range(len(heldout))}
    assert heldout_keys_ and not train_keys & heldout_keys_
    assert train_keys | heldout_keys_ == {e.key for e in store.entries()} and len(everything) == 5
    assert heldout_keys_ == {TargetPairs(TargetStore(out), split="heldout").entry(i).key for i in range(len(heldout))}
    item = everything[0]
    assert set(item) == {"content", "target", "key"} and max(item["content"].shape[-2:]) == 32
    small = TargetPairs(store, split="all", size=20)[0]
    assert small["content"].shape == small["target"].shape and max(small["content"].shape[-2:]) == 20
    assert small["key"] == item["key"]
    with pytest.raises(ValueError):
        TargetPairs(store, split="test")


def _entry(content_hash: str) -> TargetEntry:
    return TargetEntry(
        key=f"cfg/{content_hash[:16]}", content_path="x", content_hash=content_hash, config_hash="cfg",
        style_hashes=(), content_image_path=Path("/c"), target_path=Path("/t"), final={}, trace={},
        iterations_run=0, seconds=0.0, batch_size=1, device="cpu", weights="random",
    )  # fmt: skip


def test_heldout_rule_is_the_documented_hash_rule():
    import hashlib

    entries = [_entry(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(400)]
    held = heldout_keys(entries, 0.1)
    expected = {e.key for e in entries if int(hashlib.sha256(e.content_hash.encode()).hexdigest()[:8], 16) / 2**32 < 0.1}
    assert held == expected and 20 < len(held) < 60
    # Too few entries for the fraction: the smallest value is held out; a single entry never is.
    few = sorted(entries, key=lambda e: split_value(e.content_hash))[-3:]
    assert heldout_keys(few, 0.1) == {few[0].key}
    assert heldout_keys(few[:1], 0.1) == set()
    assert heldout_keys(few, 0.0) == set()


def test_not_a_store(tmp_path, style):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("x")
    with pytest.raises(StoreError, match="not a target store"):
        TargetStore(tmp_path / "x")
    with pytest.raises(StoreError, match="no such target store"):
        TargetStore(tmp_path / "missing")
    with pytest.raises(StoreError, match="not empty"):
        TargetStore.open_or_create(tmp_path / "x", teacher_config=TeacherConfig(), style_paths=[style])
    # A concurrent creator's temporary marker is not foreign content.
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / ".store.json.tmp.abc.json").write_text("{")
    store, config_hash = TargetStore.open_or_create(tmp_path / "y", teacher_config=TeacherConfig(), style_paths=[style])
    assert store.config_hashes() == [config_hash] and store.entries() == []


def test_config_hash_follows_the_weights_file_content_not_its_path(tmp_path, style):
    from distill.core.files import sha256_json
    from distill.core.config import to_dict
    from distill.targets.store import compute_config_hash

    def store_with(weights: Path, name: str) -> tuple[TargetStore, str]:
        config = TeacherConfig(criterion=config_replace(TeacherConfig().criterion, weights=str(weights)))
        return TargetStore.open_or_create(tmp_path / name, teacher_config=config, style_paths=[style])

    first = tmp_path / "weights.safetensors"
    first.write_bytes(b"the teacher's weights")
    _, original = store_with(first, "a")
    moved = first.rename(tmp_path / "elsewhere.safetensors")
    store, same = store_with(moved, "b")
    assert same == original  # moved or renamed: the same targets
    assert store.config_record()["weights_sha256"] == sha256_file(moved)
    moved.write_bytes(b"other weights")
    _, changed = store_with(moved, "c")
    assert changed != original  # other content: other targets
    with pytest.raises(StoreError, match="other loss-network weights than the teacher used"):
        store.build_criterion()
    # "pretrained" and "random" stores keep the plain formula, and so do older stores of a weights file.
    plain = TeacherConfig(criterion=config_replace(TeacherConfig().criterion, weights="random", flat_area_weight=0.0))
    style_hash = sha256_file(style)
    teacher = {k: v for k, v in to_dict(plain).items() if k not in ("photoreal_weight", "matting_epsilon", "smooth", "smooth_epsilon")}
    teacher["criterion"] = {k: v for k, v in teacher["criterion"].items() if k != "flat_area_weight"}  # later, and off
    assert compute_config_hash(plain, [style_hash]) == sha256_json({"teacher": teacher, "styles": [style_hash]})
    record = json.loads((store.root / "configs" / f"{same}.json").read_text())
    del record["weights_sha256"]
    record["teacher"]["criterion"].update(content_layers=None, style_layers=None)  # older records named no layers
    legacy = sha256_json({"teacher": record["teacher"], "styles": record["styles"]})
    (store.root / "configs" / f"{legacy}.json").write_text(json.dumps({**record, "config_hash": legacy}))
    assert TargetStore(store.root).config_record(legacy)["teacher"]["criterion"]["weights"] == str(moved)


def test_stores_keep_their_key_across_teacher_fields_added_later(tmp_path, style):
    """Fields that came later (photorealism) stay out of the hash while off: older stores keep their targets."""
    from distill.core.files import sha256_json

    config = TeacherConfig(size=32, iterations=2)
    store, key = TargetStore.open_or_create(tmp_path / "s", teacher_config=config, style_paths=[style])
    record = json.loads((store.root / "configs" / f"{key}.json").read_text())
    # A store from before the photoreal fields existed: its record lacks them, and its key is the same.
    before = {k: v for k, v in record["teacher"].items() if k not in ("photoreal_weight", "matting_epsilon", "smooth", "smooth_epsilon")}
    # ... nor the sliced-Wasserstein projection count, which a Gram teacher never uses, nor the flat-area weight, off.
    before["criterion"] = {k: v for k, v in before["criterion"].items() if k not in ("sliced_projections", "flat_area_weight")}
    # ... and the backbone's default layers were not named (None) before resolved configs named them.
    assert before["criterion"]["style_layers"] == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    before["criterion"].update(content_layers=None, style_layers=None)
    assert sha256_json({"teacher": before, "styles": record["styles"]}) == key
    # A store written while off fields still entered the hash is found under its own key.
    unnamed = {**record["teacher"], "criterion": {**record["teacher"]["criterion"], "content_layers": None, "style_layers": None}}
    full = sha256_json({"teacher": unnamed, "styles": record["styles"]})
    assert full != key
    (store.root / "configs" / f"{key}.json").rename(store.root / "configs" / f"{full}.json")
    reopened, found = TargetStore.open_or_create(tmp_path / "s", teacher_config=config, style_paths=[style])
    assert found == full and reopened.config_hashes() == [full]
    assert reopened.teacher_config(full) == config.resolved()
    # Photorealism on is a different teacher: a new key.
    _, photoreal = TargetStore.open_or_create(
        tmp_path / "s", teacher_config=config_replace(config, photoreal_weight=10.0), style_paths=[style]
    )
    assert photoreal not in (key, full)


def test_texture_network_stores_from_before_its_filter_banks_keep_their_objective(tmp_path, style):
    """The offline network's default style layers gained filter banks: a new key for the new objective,
    and an older store's unnamed layers still mean the five VGG taps its targets were made with."""
    from distill.core.config import from_dict
    from distill.targets.store import compute_config_hash

    config = TeacherConfig(size=32, iterations=2, criterion=CriterionConfig(weights="random"))
    store, key = TargetStore.open_or_create(tmp_path / "s", teacher_config=config, style_paths=[style])
    record = json.loads((store.root / "configs" / f"{key}.json").read_text())
    assert record["teacher"]["criterion"]["style_layers"][-1] == "bank8"
    older = {**record["teacher"], "criterion": {**record["teacher"]["criterion"], "content_layers": None, "style_layers": None}}
    older_key = compute_config_hash(from_dict(TeacherConfig, older), record["styles"])
    assert older_key != key
    (store.root / "configs" / f"{older_key}.json").write_text(json.dumps({**record, "teacher": older, "config_hash": older_key}))
    criterion = TargetStore(store.root).teacher_config(older_key).criterion
    assert criterion.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert criterion.content_layers == ("relu4_2",)


def test_pyramid_depth_keys_targets_only_where_it_changes_them(style):
    """Targets of the older pyramid (coarsest band 16 px) keep their key; the deeper default gets its own;
    a teacher on pixels has no pyramid, so the field stays out of its key."""
    from distill.core.config import to_dict
    from distill.core.files import sha256_json
    from distill.targets.store import compute_config_hash

    style_hash = sha256_file(style)

    def legacy_hash(config):
        later = (
            "photoreal_weight", "matting_epsilon", "smooth", "smooth_epsilon", "pyramid_coarsest", "colour_basis",
            "luminance_step",
        )
        teacher = {k: v for k, v in to_dict(config.resolved()).items() if k not in later}
        teacher["criterion"] = {k: v for k, v in teacher["criterion"].items() if k not in ("sliced_projections", "flat_area_weight")}
        teacher["criterion"].update(content_layers=None, style_layers=None)  # default layers were not named
        return sha256_json({"teacher": teacher, "styles": [style_hash]})

    older = TeacherConfig(size=32, iterations=2, pyramid_coarsest=16, colour_basis="rgb")
    assert older.resolved().luminance_step == 1.0
    assert compute_config_hash(older.resolved(), [style_hash]) == legacy_hash(older)
    deeper = TeacherConfig(size=32, iterations=2)
    assert compute_config_hash(deeper.resolved(), [style_hash]) != legacy_hash(deeper)
    on_pixels = TeacherConfig(size=32, iterations=2, parameterisation="pixels")
    assert compute_config_hash(on_pixels.resolved(), [style_hash]) == legacy_hash(on_pixels)


def test_sliced_projections_key_targets_only_where_they_change_them(tmp_path, style):
    """One direction per channel is the objective before the field existed: those targets keep their
    key and an old record reads back as 1, not as today's default; Gram teachers never use it."""
    from distill.core.config import to_dict
    from distill.core.files import sha256_json
    from distill.targets.store import compute_config_hash

    style_hash = sha256_file(style)

    def config(**criterion):
        criterion = {"flat_area_weight": 0.0, **criterion}  # a later field, off: out of the key
        return TeacherConfig(criterion=CriterionConfig(weights="random", **criterion), size=32, iterations=2).resolved()

    def legacy_hash(teacher_config):
        later = ("photoreal_weight", "matting_epsilon", "smooth", "smooth_epsilon")  # off here, so out of every key
        teacher = {k: v for k, v in to_dict(teacher_config).items() if k not in later}
        teacher["criterion"] = {k: v for k, v in teacher["criterion"].items() if k not in ("sliced_projections", "flat_area_weight")}
        return sha256_json({"teacher": teacher, "styles": [style_hash]})

    one = config(sliced_projections=1)
    assert one.criterion.style_statistic == "sliced_wasserstein"
    assert compute_config_hash(one, [style_hash]) == legacy_hash(one)
    assert compute_config_hash(config(), [style_hash]) != legacy_hash(config())
    gram = config(style_statistic="gram")
    assert compute_config_hash(gram, [style_hash]) == legacy_hash(gram)
    flat_areas_kept = config(sliced_projections=1, flat_area_weight=0.1)
    assert compute_config_hash(flat_areas_kept, [style_hash]) != legacy_hash(one)  # another objective, another key
    assert compute_config_hash(config(style_statistic="gram", sliced_projections=4), [style_hash]) == legacy_hash(gram)

    store, key = TargetStore.open_or_create(tmp_path / "s", teacher_config=one, style_paths=[style])
    path = store.root / "configs" / f"{key}.json"
    record = json.loads(path.read_text())
    del record["teacher"]["criterion"]["sliced_projections"]
    path.write_text(json.dumps(record))
    assert TargetStore(store.root).teacher_config(key) == one


def test_the_smoothing_regulariser_keys_targets_only_while_smoothing_is_on(style):
    """``smooth_epsilon`` changes a smoothed result, so it is in a smoothed teacher's key; without
    ``smooth`` it changes nothing and stays out (plain stores keep their key)."""
    from distill.targets.store import compute_config_hash

    style_hash = sha256_file(style)

    def key(**fields):
        return compute_config_hash(TeacherConfig(size=32, iterations=2, **fields).resolved(), [style_hash])

    assert key(smooth_epsilon=1e-2) == key()
    assert key(smooth=True, smooth_epsilon=1e-2) != key(smooth=True)


def _read_back_without(field_name, config, tmp_path, style):
    """Store ``config``, strip ``field_name`` from its record as a store made before the field
    existed would have it, and read the config back: (its key, the config read back)."""
    store, key = TargetStore.open_or_create(tmp_path / "s", teacher_config=config, style_paths=[style])
    path = store.root / "configs" / f"{key}.json"
    record = json.loads(path.read_text())
    del record["teacher"][field_name]
    path.write_text(json.dumps(record))
    return key, TargetStore(store.root).teacher_config(key)


def test_colour_basis_keys_targets_only_when_decorrelated(tmp_path, style):
    """RGB variables are the teacher before the field existed: its targets keep their key and
    an old record reads back as rgb, not as today's decorrelated default."""
    from distill.targets.store import compute_config_hash

    style_hash = sha256_file(style)
    rgb = TeacherConfig(size=32, iterations=2, colour_basis="rgb").resolved()
    decorrelated = TeacherConfig(size=32, iterations=2).resolved()
    assert decorrelated.colour_basis == "decorrelated"
    assert compute_config_hash(rgb, [style_hash]) != compute_config_hash(decorrelated, [style_hash])
    assert _read_back_without("colour_basis", rgb, tmp_path, style)[1] == rgb


def test_luminance_step_keys_targets_only_when_it_is_not_1(tmp_path, style):
    """Step 1 is the teacher before the field existed (RGB, or the first decorrelated basis): its
    targets keep their key and an old record reads back as 1, not as today's default."""
    from distill.targets.store import compute_config_hash

    style_hash = sha256_file(style)
    first_decorrelated = TeacherConfig(size=32, iterations=2, luminance_step=1.0).resolved()
    default = TeacherConfig(size=32, iterations=2).resolved()
    assert default.luminance_step < 1.0
    assert compute_config_hash(first_decorrelated, [style_hash]) != compute_config_hash(default, [style_hash])
    key, read_back = _read_back_without("luminance_step", first_decorrelated, tmp_path, style)
    assert read_back == first_decorrelated
    assert compute_config_hash(read_back, [style_hash]) == key
