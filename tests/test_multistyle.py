"""One student for many styles: conditional instance norm, style controls, export, training, adding a style.

CPU, random loss-network weights, 32-40 px images, a few steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.core.config import replace
from distill.core.imageio import load_image
from distill.deploy.controls import StyleControlError, apply_strength, parse_style_mix, style_weights
from distill.deploy.export import export_student
from distill.deploy.model_files import load_model, read_export_metadata
from distill.objective.config import CriterionConfig
from distill.targets.generation import generate_targets
from distill.targets.store import TargetStore
from distill.train.config import TrainConfig
from distill.train.data import StylePairs, target_pairs
from distill.train.loop import train
from students import create_student, load_student, save_student
from students.conditional import ConditionalInstanceNorm2d, conditional_norms
from students.styles import StyleBound, extend_styles, one_hot_styles, train_only_styles
from teachers.gatys import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]


def _distinct_styles(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every style its own (gamma, beta), as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in conditional_norms(model):
            norm.weight.add_(0.5 * torch.randn(norm.weight.shape, generator=generator))
            norm.bias.add_(0.5 * torch.randn(norm.bias.shape, generator=generator))
    return model.eval()


# --------------------------------------------------------------------------- the network


def test_conditional_norm_picks_and_blends_styles():
    norm = ConditionalInstanceNorm2d(4, 3)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(12.0).view(3, 4) + 1)
        norm.bias.copy_(-torch.arange(12.0).view(3, 4))
    features = torch.randn(2, 4, 5, 6)
    normalised = torch.nn.functional.instance_norm(features)
    picked = norm(features, one_hot_styles([2, 0], 3))
    assert torch.allclose(picked[0], normalised[0] * norm.weight[2, :, None, None] + norm.bias[2, :, None, None], atol=1e-5)
    assert torch.allclose(picked[1], normalised[1] * norm.weight[0, :, None, None] + norm.bias[0, :, None, None], atol=1e-5)
    half = norm(features, torch.tensor([[0.5, 0.5, 0.0]]))  # one row of weights serves the whole batch
    mean_scale = (norm.weight[0] + norm.weight[1]) / 2
    mean_shift = (norm.bias[0] + norm.bias[1]) / 2
    assert torch.allclose(half, normalised * mean_scale[:, None, None] + mean_shift[:, None, None], atol=1e-5)
    with pytest.raises(ValueError, match="holds 3 styles"):
        norm(features, None)


@pytest.mark.parametrize("name", ["fast", "johnson", "timm_encoder"])
def test_multi_style_students_run_each_image_in_its_own_style(name):
    model = _distinct_styles(create_student(name, styles=["a", "b", "c"]))
    images = torch.rand(2, 3, 40, 36)
    together = model(images, one_hot_styles([0, 2], 3))
    assert together.shape == images.shape
    assert torch.allclose(together[0], model(images[:1], one_hot_styles([0], 3))[0], atol=1e-5)
    assert torch.allclose(together[1], model(images[1:], one_hot_styles([2], 3))[0], atol=1e-5)
    assert (model(images, one_hot_styles([1, 1], 3)) - model(images, one_hot_styles([0, 0], 3))).abs().max() > 1e-3
    with pytest.raises(ValueError, match="style weights"):
        model(images)
    with pytest.raises(ValueError, match="shape"):
        model(images, torch.ones(1, 2))


def test_single_style_students_keep_their_layers_and_refuse_style_weights():
    model = create_student("fast")
    keys = set(model.state_dict())
    # The checkpoint keys of a single-style student are those of plain InstanceNorm2d layers.
    assert {"stem.1.weight", "stem.1.bias", "residual_blocks.0.body.2.weight"} <= keys
    assert not conditional_norms(model)
    with pytest.raises(ValueError, match="one style"):
        model(torch.rand(1, 3, 32, 32), torch.ones(1, 1))


def test_style_names_survive_the_checkpoint(tmp_path):
    model = _distinct_styles(create_student("fast", styles=["candy", "udnie"], preserve_color=True))
    path = save_student(model, tmp_path / "multi.safetensors")
    loaded, metadata = load_student(path)
    assert loaded.style_names == ("candy", "udnie")
    assert metadata["student"]["kwargs"]["styles"] == ["candy", "udnie"]
    images, weights = torch.rand(1, 3, 32, 32), torch.tensor([[0.3, 0.7]])
    assert torch.allclose(loaded(images, weights), model(images, weights))
    with pytest.raises(ValueError, match="unique"):
        create_student("fast", styles=["a", "a"])


def test_added_style_trains_alone_and_leaves_every_other_weight_as_it_was():
    base = _distinct_styles(create_student("fast", styles=["a", "b"]))
    extended = extend_styles(base, ["c"])
    assert extended.style_names == ("a", "b", "c")
    images = torch.rand(2, 3, 32, 32)
    # The old styles still give what they gave; the new one starts as their mean.
    assert torch.allclose(extended(images, one_hot_styles([1, 1], 3)), base(images, one_hot_styles([1, 1], 2)), atol=1e-6)
    assert torch.allclose(extended(images, one_hot_styles([2, 2], 3)), base(images, torch.tensor([[0.5, 0.5]])), atol=1e-5)
    before = {key: value.clone() for key, value in extended.state_dict().items()}
    train_only_styles(extended, [2])
    optimizer = torch.optim.Adam([p for p in extended.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        # A batch that also uses the old styles: their rows still must not move.
        loss = extended(images, torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])).mean()
        loss.backward()
        optimizer.step()
    after = extended.state_dict()
    for key, value in before.items():
        if value.dim() == 2 and value.shape[0] == 3:  # a conditional norm: only row 2 moved
            assert torch.equal(after[key][:2], value[:2]), key
            assert not torch.equal(after[key][2], value[2]), key
        else:
            assert torch.equal(after[key], value), key
    with pytest.raises(ValueError, match="already holds"):
        extend_styles(extended, ["a"])
    with pytest.raises(ValueError, match="multi-style"):
        extend_styles(create_student("fast"), ["a"])


# --------------------------------------------------------------------------- inference controls


def test_style_controls_and_their_one_line_refusals():
    names = ("candy", "udnie", "mosaic")
    assert style_weights(names).tolist() == [[1.0, 0.0, 0.0]]
    assert style_weights(names, index=2).tolist() == [[0.0, 0.0, 1.0]]
    assert style_weights(names, index="udnie").tolist() == [[0.0, 1.0, 0.0]]
    assert style_weights(names, mix="0:1,mosaic:3").tolist() == [[0.25, 0.0, 0.75]]
    assert parse_style_mix("candy:0.5, 1:0.5", names) == {0: 0.5, 1: 0.5}
    assert style_weights(None) is None
    refusals = {
        "out of range": dict(index=3),
        "unknown style": dict(mix="vangogh:1"),
        "sum to 0": dict(mix="0:0,1:0"),
        "finite and >= 0": dict(mix="0:-1,1:2"),
        "twice": dict(mix="0:1,candy:1"),
        "not both": dict(index=0, mix="1:1"),
        "STYLE:WEIGHT": dict(mix="0.5"),
    }
    for message, controls in refusals.items():
        with pytest.raises(StyleControlError, match=message):
            style_weights(names, **controls)
    with pytest.raises(StyleControlError, match="single style"):
        style_weights(None, index=0)
    with pytest.raises(StyleControlError, match="finite and >= 0"):
        style_weights(names, mix={0: 2.0, 1: -1.0})  # a library mix is checked as the command line's is
    content, stylised = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert torch.equal(apply_strength(content, stylised, 0.0), content)
    assert torch.equal(apply_strength(content, stylised, 1.0), stylised)
    assert torch.allclose(apply_strength(content, stylised, 0.25), 0.75 * content + 0.25 * stylised)


@pytest.fixture(scope="module")
def multi_checkpoint(tmp_path_factory) -> Path:
    model = _distinct_styles(create_student("fast", styles=["candy", "udnie", "mosaic"]), seed=3)
    return save_student(model, tmp_path_factory.mktemp("multi") / "multi.safetensors")


@pytest.mark.parametrize("format, suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("pt2", ".pt2")])
def test_exports_take_style_weights_and_match_the_checkpoint(multi_checkpoint, tmp_path, format, suffix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_student(multi_checkpoint, tmp_path / f"multi{suffix}", format=format)
        exported = load_model(result.path)
    assert max(result.max_abs_diff.values()) <= 1e-4
    metadata = read_export_metadata(result.path)
    assert metadata["style_weights"] == {"name": "style_weights", "shape": [1, 3], "dtype": "float32",
                                         "styles": ["candy", "udnie", "mosaic"]}
    if format == "onnx":
        assert [entry.name for entry in exported.session.get_inputs()] == ["images", "style_weights"]
    reference, _ = load_student(multi_checkpoint)
    images = torch.rand(2, 3, 45, 37)
    for controls, weights in ((dict(style_index=1), [[0.0, 1.0, 0.0]]), (dict(style_mix="candy:1,mosaic:1"), [[0.5, 0.0, 0.5]])):
        expected = reference(images, torch.tensor(weights))
        assert (exported.with_controls(**controls)(images) - expected).abs().max() < 1e-4
    assert torch.equal(exported.with_controls(strength=0.0)(images), images)
    # Controls compose: setting the strength keeps the chosen style.
    chosen = exported.with_controls(style_index=2).with_controls(strength=0.5)
    expected = 0.5 * images + 0.5 * reference(images, torch.tensor([[0.0, 0.0, 1.0]]))
    assert (chosen(images) - expected).abs().max() < 1e-4


def _write_photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    image = torch.nn.functional.interpolate(low, size=(40, 40), mode="bicubic", align_corners=False)[0]
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _stylize(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "stylize.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def test_stylize_lists_picks_mixes_and_refuses_styles(multi_checkpoint, tmp_path):
    photo = _write_photo(tmp_path / "photo.png", seed=1)
    listed = _stylize("--model", str(multi_checkpoint), "--list-styles")
    assert listed.returncode == 0 and listed.stdout.split("\n")[:3] == ["0\tcandy", "1\tudnie", "2\tmosaic"]
    mixed = _stylize("--model", str(multi_checkpoint), "--input", str(photo), "--output", str(tmp_path / "mix.png"),
                     "--style-mix", "candy:0.5,udnie:0.5", "--quiet")
    assert mixed.returncode == 0, mixed.stderr
    model, _ = load_student(multi_checkpoint)
    expected = model(load_image(photo)[None], torch.tensor([[0.5, 0.5, 0.0]]))[0]
    assert (load_image(tmp_path / "mix.png") - expected).abs().max() <= 1 / 255 + 1e-6
    kept = _stylize("--model", str(multi_checkpoint), "--input", str(photo), "--output", str(tmp_path / "kept.png"),
                    "--style-index", "2", "--strength", "0", "--quiet")
    assert kept.returncode == 0 and torch.equal(load_image(tmp_path / "kept.png"), load_image(photo))
    single = save_student(create_student("fast"), tmp_path / "single.safetensors")
    refusals = [
        ([str(multi_checkpoint), "--style-index", "5"], "out of range"),
        ([str(multi_checkpoint), "--style-mix", "0:0"], "sum to 0"),
        ([str(multi_checkpoint), "--style-mix", "picasso:1"], "unknown style"),
        ([str(single), "--style-index", "0"], "single style"),
        ([str(multi_checkpoint), "--strength", "2"], "--strength"),
    ]
    for arguments, message in refusals:
        refused = _stylize("--model", *arguments, "--input", str(photo), "--output", str(tmp_path / "x.png"))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and message in refused.stderr
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def two_style_store(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("multi_store")
    for index in range(5):
        _write_photo(base / "photos" / f"p{index}.png", seed=index)
    teacher = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=40), size=32, iterations=3)
    for name, seed in (("warm", 11), ("cool", 12), ("late", 13)):
        if name == "late":
            continue  # added by the add-style test
        generate_targets(content_dir=base / "photos", style_paths=[_write_photo(base / f"{name}.png", seed=seed)],
                         store_root=base / "store", teacher_config=teacher, batch_size=5, log=lambda _line: None)
    return base


def _tiny(store: Path, **changes) -> TrainConfig:
    config = TrainConfig(
        targets=str(store), student="fast", steps=3, batch_size=4, crop_size=32, eval_size=32, eval_max_images=2,
        warmup_steps=0, log_interval=1, eval_interval=3, image_interval=1000, checkpoint_interval=3, device="cpu",
        heldout_fraction=0.3,
    )
    return replace(config, **changes)


def test_multi_style_training_mixes_styles_and_saves_their_names(two_style_store, tmp_path):
    store = TargetStore(two_style_store / "store")
    parts = [target_pairs(store, split="train", config_hash=h) for h in store.config_hashes()]
    pairs = StylePairs(parts)
    assert len(pairs) == sum(len(part) for part in parts)
    assert {pairs[i]["style"] for i in range(len(pairs))} == {0, 1}
    assert pairs.locate(len(parts[0])) == (1, 0)

    lines = []
    result = train(_tiny(two_style_store / "store", multi_style=True), tmp_path / "run", log=lines.append)
    model, metadata = load_student(result.last_checkpoint)
    assert model.style_names == ("cool", "warm")  # ordered by style name
    assert metadata["extra"]["style_configs"] == sorted(store.config_hashes(), key=store.style_name)
    assert any("2 styles in one student" in line for line in lines)
    assert {"ssim/cool", "ssim/warm"} <= set(result.evaluations[-1])

    # Adding a third style later: only its norms train; the first two styles are kept bit for bit.
    teacher = store.teacher_config(store.config_hashes()[0])
    _, late_hash = TargetStore.open_or_create(two_style_store / "store", teacher_config=teacher,
                                              style_paths=[_write_photo(two_style_store / "late.png", seed=13)])
    generate_targets(content_dir=two_style_store / "photos", style_paths=[two_style_store / "late.png"],
                     store_root=two_style_store / "store", teacher_config=teacher, batch_size=5, log=lambda _line: None)
    with pytest.raises(Exception, match="styles changed since the run started"):
        train(_tiny(two_style_store / "store", multi_style=True, steps=4), tmp_path / "run", resume=True)
    added = train(_tiny(two_style_store / "store", config_hash=late_hash, add_style_to=str(result.last_checkpoint),
                        lr=1e-2), tmp_path / "added", log=lines.append)
    extended, extended_metadata = load_student(added.last_checkpoint)
    assert extended.style_names == ("cool", "warm", "late")
    assert extended_metadata["extra"]["style_configs"][2] == late_hash
    assert extended_metadata["extra"]["train_config"]["student"] == "fast"
    old, new = model.state_dict(), extended.state_dict()
    for key, value in old.items():
        assert torch.equal(new[key][: value.shape[0]], value), key
    assert any(not torch.equal(new[key][2], new[key][:2].mean(0)) for key, value in old.items() if value.dim() == 2)
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(extended(images, one_hot_styles([1], 3)), model(images, one_hot_styles([1], 2)))

    with pytest.raises(Exception, match="already holds"):
        train(_tiny(two_style_store / "store", config_hash=late_hash, add_style_to=str(added.last_checkpoint)),
              tmp_path / "again")
    unrecorded = save_student(create_student("fast", styles=["x", "y"]), tmp_path / "unrecorded.safetensors")
    with pytest.raises(Exception, match="does not record which teacher config"):
        train(_tiny(two_style_store / "store", config_hash=late_hash, add_style_to=str(unrecorded)), tmp_path / "unrecorded")
    with pytest.raises(Exception, match="unfreeze_step"):
        _tiny(two_style_store / "store", add_style_to=str(added.last_checkpoint), unfreeze_step=2)
    single = save_student(create_student("fast"), tmp_path / "single.safetensors")
    with pytest.raises(Exception, match="single-style"):
        train(_tiny(two_style_store / "store", config_hash=late_hash, add_style_to=str(single)), tmp_path / "single_run")


def test_style_bound_student_is_the_student_with_fixed_weights():
    model = _distinct_styles(create_student("fast", styles=["a", "b"]))
    bound = StyleBound(model, torch.tensor([[0.25, 0.75]]))
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(bound(images), model(images, torch.tensor([[0.25, 0.75]])))
    assert bound.stride == model.stride and bound.min_side == model.min_side


def test_tiled_stylisation_uses_the_chosen_style_and_strength(multi_checkpoint, tmp_path):
    from distill.deploy.stylize import stylize_path

    photo = _write_photo(tmp_path / "photo.png", seed=4)
    model = load_model(multi_checkpoint).with_controls(style_index="mosaic", strength=0.5)
    summary = stylize_path(model, photo, tmp_path / "tiled.png", tile=24, overlap=8)
    assert summary.tiled == 1
    reference, _ = load_student(multi_checkpoint)
    image = load_image(photo)[None]
    whole = apply_strength(image, reference(image, one_hot_styles([2], 3)), 0.5)[0]
    # Instance norm sees each tile alone, so tiles differ from the whole image a little, not by a style.
    other = apply_strength(image, reference(image, one_hot_styles([0], 3)), 0.5)[0]
    tiled = load_image(tmp_path / "tiled.png")
    assert (tiled - whole).abs().mean() < (tiled - other).abs().mean()


@pytest.mark.gpu
def test_added_style_trains_after_the_student_moves_to_the_gpu():
    extended = extend_styles(_distinct_styles(create_student("fast", styles=["a", "b"])), ["c"])
    train_only_styles(extended, [2])  # on the CPU, as the trainer does before moving the student
    extended = extended.cuda()
    extended(torch.rand(2, 3, 32, 32, device="cuda"), one_hot_styles([2, 0], 3).cuda()).mean().backward()
    norm = conditional_norms(extended)[0]
    assert norm.weight.grad[:2].abs().max() == 0 and norm.weight.grad[2].abs().max() > 0


def test_one_style_of_a_multi_style_student_exports_as_an_images_only_model(multi_checkpoint, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_student(multi_checkpoint, tmp_path / "udnie.onnx", format="onnx", style_index="udnie")
        exported = load_model(result.path)
    assert exported.styles is None and [entry.name for entry in exported.session.get_inputs()] == ["images"]
    assert read_export_metadata(result.path)["bound_style"]["chosen"] == {"udnie": 1.0}
    reference, _ = load_student(multi_checkpoint)
    images = torch.rand(1, 3, 41, 39)
    assert (exported(images) - reference(images, one_hot_styles([1], 3))).abs().max() < 1e-4
    from distill.deploy.export import ExportError

    with pytest.raises(ExportError, match="out of range"):
        export_student(multi_checkpoint, tmp_path / "bad.onnx", format="onnx", style_index=9)
    with pytest.raises(ExportError, match="single style"):
        export_student(save_student(create_student("fast"), tmp_path / "single.safetensors"), tmp_path / "s.onnx",
                       format="onnx", style_index=0)
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "s.onnx").exists()
