"""Student training (distill/train/, scripts/train_student.py): CPU, random weights, 32 px.

The store is a real target store made by ``distill.targets.generate_targets``. In-process
runs share one criterion (``SharedCriterionStore``: VGG-19's random init alone costs
seconds); subprocess runs (torchrun) rebuild it from the store as in production.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import distill.train.loop as loop_module
from distill.core.color import rgb_to_yiq, yiq_to_rgb
from distill.core.config import from_dict, replace, to_dict
from distill.objective.config import CriterionConfig
from distill.objective.terms import distill_terms
from distill.targets.pairs import TargetPairs
from distill.targets.store import TargetStore
from distill.targets.generation import generate_targets
from distill.train.config import TrainConfig, lr_at, resolve_config
from distill.train.data import StepBatchSampler, global_batch, random_crop_pair
from distill.train.evaluate import evaluate
from distill.train.loop import NonFiniteLossError, train
from distill.train.objective import compute_objective
from students import create_student, list_students, load_student, read_student_metadata
from teachers.gatys import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_student.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_student_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_image(path: Path, height: int, width: int, seed: int) -> Path:
    # Smooth random colour fields: something a 32 px student can fit in a few dozen steps.
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    image = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)[0]
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


class SharedCriterionStore:
    """A real TargetStore whose criterion is built once and reused by every in-process run."""

    def __init__(self, store: TargetStore) -> None:
        self._store = store
        self._cache: dict = {}

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def build_criterion(self, config_hash=None, *, device="cpu", weights=None, network=None):
        key = (self._store.resolve_config(config_hash), str(device), weights)
        if key not in self._cache:
            self._cache[key] = self._store.build_criterion(config_hash, device=device, weights=weights, network=network)
        return self._cache[key]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("train_store")
    # Mixed aspect ratios; 64x24 becomes 40x15 at the teacher's size, below the 32 px crop.
    shapes = [(40, 48), (48, 40), (44, 44), (40, 40), (64, 24), (48, 48)]
    for i, (height, width) in enumerate(shapes):
        _write_image(base / "contents" / f"c{i}.png", height, width, seed=i)
    style = _write_image(base / "style.png", 48, 48, seed=99)
    teacher = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=48), size=40, iterations=4)
    generate_targets(
        content_dir=base / "contents", style_paths=[style], store_root=base / "store",
        teacher_config=teacher, batch_size=len(shapes), log=lambda _message: None,
    )
    return base / "store"


@pytest.fixture(scope="module")
def store(store_root) -> SharedCriterionStore:
    return SharedCriterionStore(TargetStore(store_root))


def tiny(store_root: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        targets=str(store_root), student="johnson", student_kwargs={"num_residual_blocks": 1},
        steps=2, batch_size=2, crop_size=32, eval_size=32, eval_max_images=2, warmup_steps=0, lr=1e-3,
        log_interval=1, eval_interval=1000, image_interval=1000, checkpoint_interval=1000, device="cpu",
    )
    return replace(base, **changes)


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# --------------------------------------------------------------------------- data and config units


def test_batches_are_a_function_of_seed_and_step_and_shard_cleanly():
    first = [global_batch(s, count=5, batch_size=2, seed=3) for s in range(1, 6)]
    assert first == [global_batch(s, count=5, batch_size=2, seed=3) for s in range(1, 6)]
    # 10 draws over 5 items: every item exactly twice (two epochs), in a seeded order.
    indices = [i for batch in first for i, _ in batch]
    assert sorted(indices) == sorted(list(range(5)) * 2)
    assert first != [global_batch(s, count=5, batch_size=2, seed=4) for s in range(1, 6)]
    whole = list(StepBatchSampler(count=5, batch_size=4, seed=1, first_step=2, last_step=4))
    halves = [list(StepBatchSampler(count=5, batch_size=4, seed=1, first_step=2, last_step=4, rank=r, world_size=2))
              for r in range(2)]
    assert [a + b for a, b in zip(*halves)] == whole
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(count=5, batch_size=3, seed=0, first_step=1, last_step=2, world_size=2)


def test_crop_is_shared_by_content_and_target_and_small_images_grow():
    image = torch.rand(3, 15, 40)
    content, target = random_crop_pair(image, image.clone(), crop_size=32, hflip=True, seed=7)
    assert content.shape == target.shape == (3, 32, 32)
    assert torch.equal(content, target)
    again, _ = random_crop_pair(image, image.clone(), crop_size=32, hflip=True, seed=7)
    assert torch.equal(content, again)
    big = torch.rand(3, 64, 64)
    crops = {random_crop_pair(big, big, crop_size=32, hflip=True, seed=s)[0].sum().item() for s in range(6)}
    assert len(crops) > 1  # the seed moves the crop


def test_config_layers_yaml_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.002\ndistill_kind: pixel_l1\nsteps: 7\nbetas: [0.5, 0.9]\n")
    config = resolve_config(config_file=path, overrides={"lr": 0.003, "batch_size": 8})
    assert (config.lr, config.steps, config.batch_size, config.seed) == (0.003, 7, 8, 0)
    assert config.distill_kind == ("pixel_l1",) and config.betas == (0.5, 0.9)
    assert from_dict(TrainConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        resolve_config(overrides={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="distill_kind"):
        TrainConfig(distill_kind=("pixel_l3",))
    schedule = TrainConfig(lr=1.0, steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert [round(lr_at(s, schedule), 6) for s in (1, 2, 10)] == [0.5, 1.0, 0.1]


def test_objective_reuses_features_without_changing_them(store):
    criterion = store.build_criterion()
    torch.manual_seed(0)
    content, target, output = torch.rand(3, 2, 3, 32, 32).unbind(0)
    output.requires_grad_(True)
    config = TrainConfig(distill_kind=("pixel_l1", "pixel_l2", "feature"), distill_weight=0.5)
    objective, terms = compute_objective(criterion, output, content, target, config=config)
    reference = criterion(output, content=content).mean()
    separate = distill_terms(criterion, output, target, config.distill_kind)
    assert torch.allclose(terms["criterion"], reference.total, rtol=1e-5)
    for kind, value in separate.items():
        assert torch.allclose(terms[f"distill_{kind}"], value.mean(), rtol=1e-5), kind
    assert torch.allclose(objective, reference.total + 0.5 * sum(v.mean() for v in separate.values()), rtol=1e-5)
    (grad,) = torch.autograd.grad(objective, output)
    assert grad.abs().sum() > 0
    assert all(float(v.max()) == 0 for v in distill_terms(criterion, target, target, config.distill_kind).values())


def test_colour_preserving_store_distills_luminance_only(store):
    criterion = store.build_criterion()
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    yiq = rgb_to_yiq(target)
    recoloured = yiq_to_rgb(torch.cat([yiq[:, :1], yiq[:, 1:].flip(1) * 0.5], dim=1))  # same Y, other chroma
    kinds = ("pixel_l1", "pixel_l2", "feature")
    assert all(float(v.max()) > 1e-4 for v in distill_terms(criterion, recoloured, target, kinds).values())
    criterion.luminance_only = True  # what build_criterion sets for a luminance_only teacher config
    try:
        for kind, value in distill_terms(criterion, recoloured, target, kinds).items():
            assert float(value.max()) < 1e-6, kind
    finally:
        criterion.luminance_only = False


# --------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("name", list_students())
def test_every_student_trains_a_step(name, store, store_root, tmp_path):
    kwargs = {"johnson": {"num_residual_blocks": 1}}.get(name, {})
    # timm_encoder starts with a frozen encoder; unfreezing at step 2 exercises that path.
    config = tiny(store_root, student=name, student_kwargs=kwargs, unfreeze_step=2 if name == "timm_encoder" else None)
    result = train(config, tmp_path / "run", store=store, progress=False)
    assert [r["step"] for r in result.history] == [1, 2]
    assert all(np.isfinite(v) for r in result.history for v in r.values())
    model, _ = load_student(result.last_checkpoint)
    torch.manual_seed(config.seed)
    fresh = create_student(name, **kwargs)
    changed = [k for k, v in fresh.state_dict().items() if v.is_floating_point() and not torch.equal(v, model.state_dict()[k])]
    assert changed, "no weight moved"
    if name == "timm_encoder":
        assert any(k.startswith("encoder.") for k in changed), "the encoder was not unfrozen"


@pytest.mark.parametrize("weight, kinds", [(0.0, ("feature",)), (0.5, ("pixel_l1", "pixel_l2", "feature"))])
def test_distill_weight_zero_and_positive(weight, kinds, store, store_root, tmp_path):
    config = tiny(store_root, steps=1, distill_weight=weight, distill_kind=kinds)
    result = train(config, tmp_path / "run", store=store, progress=False)
    record = records(tmp_path / "run")[0]
    assert record["objective"] == pytest.approx(record["criterion"] + record["distill"], rel=1e-5)
    if weight == 0:
        assert record["distill"] == 0 and not any(k.startswith("distill_") for k in record)
    else:
        parts = [record[f"distill_{k}"] for k in kinds]
        assert all(p > 0 for p in parts)
        assert record["distill"] == pytest.approx(weight * sum(parts), rel=1e-5)
    assert result.history[0]["objective"] == record["objective"]


@pytest.mark.slow
def test_tiny_run_overfits_its_targets(store, store_root, tmp_path):
    config = tiny(store_root, student="fast", student_kwargs={}, steps=40, lr=3e-3, warmup_steps=3,
                  distill_weight=1.0, eval_interval=40, log_interval=10)
    result = train(config, tmp_path / "run", store=store, progress=False)
    criterion = store.build_criterion()
    pairs = TargetPairs(store, split="train")
    measure = replace(config, eval_max_images=None)
    torch.manual_seed(config.seed)
    before = evaluate(create_student("fast"), criterion, pairs, config=measure, device=torch.device("cpu"))
    trained, _ = load_student(result.last_checkpoint)
    after = evaluate(trained, criterion, pairs, config=measure, device=torch.device("cpu"))
    assert after["total"] < 0.5 * before["total"], (before, after)


def test_resume_continues_exactly(store, store_root, tmp_path):
    config = tiny(store_root, steps=6, warmup_steps=2, lr_decay_steps=6, checkpoint_interval=3, eval_interval=3)
    straight = train(config, tmp_path / "straight", store=store, progress=False)
    run = tmp_path / "resumed"
    train(replace(config, steps=3), run, store=store, progress=False)
    state = torch.load(run / "checkpoints" / "last_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3
    with pytest.raises(FileExistsError, match="resume"):
        train(config, run, store=store, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(replace(config, lr=2e-3), run, store=store, resume=True, progress=False)
    resumed = train(config, run, store=store, resume=True, progress=False)
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for a, b in zip(straight.history[3:], resumed.history):
        for name in ("objective", "content", "style", "tv", "distill", "lr"):
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-8), (a["step"], name)
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5, 6]
    assert resumed.best == straight.best


def _nonfinite_style_at_call(monkeypatch, call: int) -> None:
    """Make the style term (and so the objective) +inf in the loop's ``call``-th forward pass."""
    calls = []
    original = loop_module.forward_objective

    def poisoned(*args, **kwargs):
        objective, terms = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            terms["style"] = terms["style"] + float("inf")
            objective = objective + terms["style"]
        return objective, terms

    monkeypatch.setattr(loop_module, "forward_objective", poisoned)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(store, store_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop_module, "open_store", lambda path: store)
    _nonfinite_style_at_call(monkeypatch, 4)  # step 4 of a fresh run
    run = tmp_path / "run"
    script = _load_script()
    code = script.main([
        "--targets", str(store_root), "--out", str(run), "--student", "johnson",
        "--student-kwargs", '{"num_residual_blocks": 1}', "--steps", "5", "--batch-size", "2",
        "--crop-size", "32", "--eval-size", "32", "--warmup-steps", "0", "--checkpoint-interval", "2",
        "--eval-interval", "2", "--log-interval", "1", "--device", "cpu", "--no-progress",
    ])
    out, err = capsys.readouterr()
    assert code == 3
    assert "step 4" in err and "'style'" in err and "step 2" in err
    assert "RANDOM weights" in out
    last = read_student_metadata(run / "checkpoints" / "last.safetensors")
    assert last["extra"]["step"] == 2 and last["extra"]["loss_network_random"] is True
    assert "random" in last["extra"]["loss_network_weights"]
    assert torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)["step"] == 2
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    load_student(run / "checkpoints" / "last.safetensors")
    # The run resumes from the last good checkpoint with only --out: its config comes from the run.
    monkeypatch.undo()
    monkeypatch.setattr(loop_module, "open_store", lambda path: store)
    code = script.main(["--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]
    assert read_student_metadata(run / "checkpoints" / "last.safetensors")["extra"]["step"] == 4
    _nonfinite_style_at_call(monkeypatch, 3)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(tiny(store_root, steps=3), tmp_path / "other", store=store, progress=False)


def test_runs_saved_with_the_removed_test_hook_still_resume(store, store_root, tmp_path):
    run = tmp_path / "run"
    train(tiny(store_root, steps=1, checkpoint_interval=1), run, store=store, progress=False)
    state_path = run / "checkpoints" / "last_state.pt"
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    state["config"]["fault_nonfinite_step"] = None  # what runs of earlier versions saved
    torch.save(state, state_path)
    config = resolve_config(overrides={"steps": 2}, run_dir=run, resume=True)
    assert train(config, run, store=store, resume=True, progress=False).step == 2
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        resolve_config(overrides={"fault_nonfinite_step": 3})


def test_nonfinite_weights_are_never_saved(store, store_root, tmp_path, monkeypatch):
    calls = []
    original = loop_module.backward_step

    def poisoned(objective, student, *args, **kwargs):
        original(objective, student, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # a finite loss whose update still broke the weights
            next(student.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(loop_module, "backward_step", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="weights became non-finite in the update of step 2.*step 1"):
        train(tiny(store_root, steps=3, checkpoint_interval=1), run, store=store, progress=False)
    assert read_student_metadata(run / "checkpoints" / "last.safetensors")["extra"]["step"] == 1
    model, _ = load_student(run / "checkpoints" / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_checkpoint_rebuilds_without_the_run_config(store, store_root, tmp_path):
    config = tiny(store_root, steps=2, eval_interval=2, image_interval=2)
    run = tmp_path / "run"
    result = train(config, run, store=store, progress=False)
    assert (run / "config.yaml").exists() and list((run / "samples").glob("step_*.png"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    (run / "config.yaml").unlink()
    for path in (result.last_checkpoint, result.best_checkpoint):
        model, metadata = load_student(path)
        extra = metadata["extra"]
        assert metadata["student"] == {"name": "johnson", "kwargs": {"num_residual_blocks": 1}}
        # The run's config as decided: smooth_output None ("the teacher decides") became False.
        assert from_dict(TrainConfig, extra["train_config"]) == replace(config, smooth_output=False)
        assert extra["step"] == 2 and extra["config_hash"] == store.resolve_config()
        assert Path(extra["targets"]) == store_root.resolve()
        assert extra["heldout"]["total"] > 0 and extra["teacher_config"]["criterion"]["weights"] == "random"
        with torch.no_grad():
            out = model(torch.rand(1, 3, 36, 28))
        assert out.shape == (1, 3, 36, 28) and 0 <= float(out.min()) and float(out.max()) <= 1
    state = torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)
    last, _ = load_student(result.last_checkpoint)
    assert all(torch.equal(v, state["model"][k]) for k, v in last.state_dict().items())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one(store, store_root, tmp_path):
    config = tiny(store_root, steps=2, batch_size=4)
    single = train(config, tmp_path / "single", store=store, progress=False)
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT),
        "--targets", str(store_root), "--out", str(run), "--student", "johnson",
        "--student-kwargs", '{"num_residual_blocks": 1}', "--steps", "2", "--batch-size", "4",
        "--crop-size", "32", "--eval-size", "32", "--warmup-steps", "0", "--lr", "1e-3",
        "--log-interval", "1", "--device", "cpu", "--no-progress", "--set", "eval_max_images=2",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stdout
    ddp = records(run)
    assert [r["step"] for r in ddp] == [1, 2]
    for a, b in zip(single.history, ddp):
        for name in ("objective", "content", "style", "tv", "distill"):
            assert b[name] == pytest.approx(a[name], rel=1e-4), (a["step"], name)
    # Outputs, not weights: a conv bias feeding an InstanceNorm has a zero gradient up to float
    # noise, which Adam's normalisation turns into lr-sized steps without changing the output.
    one, _ = load_student(single.last_checkpoint)
    two, _ = load_student(run / "checkpoints" / "last.safetensors")
    probe = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(one(probe), two(probe), atol=1e-4)
