"""Deep Photo Style Transfer: matting Laplacian, semantic masks, region style terms, the photoreal teacher."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from distill.cli.teacher_args import add_teacher_arguments, teacher_config_from_args
from distill.core.affine import affine_residual, guided_filter
from distill.core.color import recolour_regions
from distill.core.imageio import save_image
from distill.core.masks import (
    PALETTE,
    MaskError,
    MaskWarning,
    fit_mask,
    load_mask,
    mask_image,
    region_fractions,
    shared_regions,
)
from distill.objective.config import CriterionConfig
from distill.objective.criterion import CriterionError, build_criterion
from distill.objective.matting import MattingPenalty, matting_laplacian
from distill.core.config import replace
from distill.report.aggregate import diagnoses
from distill.report.photometrics import photoreal_figures
from distill.targets.generation import generate_targets
from distill.targets.store import TargetStore
from distill.train.config import TrainConfig
from distill.train.loop import train
from students import create_student, load_student, save_student
from students.registry import AffineSmoothedStudent
from teachers.gatys import DEFAULT_PHOTOREAL_WEIGHT, PHOTOREAL_CONTENT_WEIGHT, TeacherConfig, photoreal_teacher, stylize

BLACK, WHITE, RED, BLUE = (list(PALETTE).index(name) for name in ("black", "white", "red", "blue"))


def _photo(size: int = 24, seed: int = 0) -> torch.Tensor:
    """A smooth photo-like image: gradients and a soft disc, plus a little grain."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.08).float()
    image = torch.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y * (1 - disc), 0.5 * disc + 0.2 * (1 - x)])
    return (image + 0.03 * torch.rand(3, size, size, generator=generator)).clamp(0, 1)


def _halves(size: int, left: int, right: int) -> torch.Tensor:
    mask = torch.full((size, size), right, dtype=torch.long)
    mask[:, : size // 2] = left
    return mask


# ---------------------------------------------------------------- matting Laplacian


def test_the_matting_laplacian_is_symmetric_psd_and_blind_to_local_recolouring():
    photo = _photo(16)
    laplacian = matting_laplacian(photo)
    dense = laplacian.toarray()
    assert np.allclose(dense, dense.T, atol=1e-9)
    assert np.allclose(dense.sum(axis=1), 0, atol=1e-8)
    assert np.linalg.eigvalsh(dense).min() > -1e-8
    pixels = photo.permute(1, 2, 0).reshape(-1, 3).double().numpy()
    recoloured = pixels @ np.array([[0.2, 0.9, 0.1], [0.5, 0.1, 0.3], [0.1, 0.2, 0.7]]) + 0.1
    noise = np.random.default_rng(0).random(pixels.shape)

    def form(values):
        return float((values * (laplacian @ values)).sum()) / len(values)

    # A global affine recolouring is locally affine everywhere: almost free; noise is not.
    assert form(recoloured) < 1e-3 * form(noise)


def test_the_matting_penalty_gradient_is_twice_l_v():
    photo = _photo(12)
    penalty = MattingPenalty(photo[None])
    image = torch.rand(1, 3, 12, 12, requires_grad=True)
    value = penalty(image)
    value.sum().backward()
    dense = torch.from_numpy(matting_laplacian(photo).toarray()).float()
    values = image.detach()[0].reshape(3, -1).t()
    assert torch.allclose(value[0], (values * (dense @ values)).sum() / 144, rtol=1e-4)
    expected = (2 * dense @ values / 144).t().reshape(1, 3, 12, 12)
    assert torch.allclose(image.grad, expected, atol=1e-6)


# ---------------------------------------------------------------- affine measure and filter


def test_the_affine_residual_is_near_zero_for_a_recolouring_and_high_for_new_texture():
    photo = _photo(32)
    recoloured = (torch.einsum("ij,jhw->ihw", torch.tensor([[0.3, 0.6, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), photo) + 0.05)
    textured = (photo + 0.1 * torch.rand_like(photo)).clamp(0, 1)
    assert affine_residual(recoloured, photo) < 0.01
    assert affine_residual(textured, photo) > 3 * affine_residual(recoloured, photo)
    # The guided filter makes the textured result locally affine again.
    smoothed = guided_filter(textured[None], photo[None], radius=1, epsilon=1e-4)[0]
    assert affine_residual(smoothed, photo) < 0.5 * affine_residual(textured, photo)


# ---------------------------------------------------------------- masks


def test_masks_snap_to_the_palette_and_drop_anti_aliased_borders(tmp_path):
    mask = torch.full((3, 40, 40), 0.02)  # near-black
    mask[:, :, 20:] = 0.97  # near-white
    mask[:, :, 19:21] = 0.5  # a 2 px anti-aliased border: exact grey
    mask[:, 30:, :] = torch.tensor([0.95, 0.05, 0.0])[:, None, None]  # a red band, 10 px: a real region
    save_image(mask, tmp_path / "mask.png")
    classes = load_mask(tmp_path / "mask.png")
    fractions = region_fractions(classes)
    assert set(fractions) == {BLACK, WHITE, RED}
    assert fractions[RED] == pytest.approx(0.25, abs=0.02)
    assert torch.equal(load_mask_roundtrip(classes, tmp_path), classes)


def load_mask_roundtrip(classes: torch.Tensor, folder) -> torch.Tensor:
    save_image(mask_image(classes), folder / "copy.png")
    return load_mask(folder / "copy.png")


def test_a_mask_one_pixel_off_is_resized_with_a_warning_and_a_far_one_refused():
    mask = _halves(31, BLACK, WHITE)
    with pytest.warns(MaskWarning, match="resized"):
        assert fit_mask(mask, (32, 32), what="mask").shape == (32, 32)
    with pytest.raises(MaskError, match="within"):
        fit_mask(mask, (48, 32), what="mask")


def test_regions_in_one_mask_only_are_ignored_with_a_warning_and_none_shared_is_an_error():
    content, style = _halves(16, BLACK, WHITE), _halves(16, BLACK, RED)
    with pytest.warns(MaskWarning) as caught:
        assert shared_regions(content, style) == (BLACK,)
    assert sorted(str(w.message).split(": ")[1] for w in caught) == ["red only in the style mask; ignored",
                                                                    "white only in the content mask; ignored"]
    with pytest.raises(MaskError, match="share no region"):
        shared_regions(_halves(16, BLUE, WHITE), style)


def test_an_unreadable_mask_is_a_mask_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="bad.png"):
        load_mask(tmp_path / "bad.png")


# ---------------------------------------------------------------- region style terms


@pytest.fixture(scope="module")
def two_colour_style():
    """A style whose left half is red and right half blue, with its mask (red, blue regions)."""
    style = torch.zeros(3, 32, 32)
    style[0, :, :16] = 0.9
    style[2, :, 16:] = 0.9
    return (style + 0.05 * torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1), _halves(32, RED, BLUE)


@pytest.mark.parametrize("statistic", ["gram", "sliced_wasserstein"])
def test_each_region_is_matched_to_its_own_region_of_the_style(two_colour_style, statistic):
    style, style_mask = two_colour_style
    config = CriterionConfig(weights="random", style_size=32, style_statistic=statistic)
    criterion = build_criterion(config, [style], style_mask=style_mask)
    content_mask = _halves(32, RED, BLUE)[None]
    right = style[None]
    swapped = style.flip(-1)[None]
    terms = {name: criterion(image, content=image, content_masks=content_mask).style for name, image in
             (("right", right), ("swapped", swapped))}
    assert float(terms["right"]) < 0.2 * float(terms["swapped"])


def test_masks_are_required_exactly_when_the_style_has_one(two_colour_style):
    style, style_mask = two_colour_style
    criterion = build_criterion(CriterionConfig(weights="random", style_size=32), [style], style_mask=style_mask)
    with pytest.raises(ValueError, match="masks"):
        criterion(style[None], content=style[None])


def test_regions_too_small_for_every_style_layer_are_an_error(two_colour_style):
    style, _ = two_colour_style
    # At relu3_1 (1/4 resolution) every position is half red, half blue: no region has a distribution there.
    config = CriterionConfig(weights="random", style_size=32, style_layers=("relu3_1",))
    with pytest.raises(CriterionError, match="too small"):
        build_criterion(config, [style], style_mask=_checker(32))


def _checker(size: int) -> torch.Tensor:
    """A 1 px checkerboard of red and blue: at any pooled layer every position is half of each."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.where((x + y) % 2 == 0, RED, BLUE)


# ---------------------------------------------------------------- the photoreal teacher


@pytest.mark.slow
def test_the_photoreal_teacher_recolours_without_painting(two_colour_style, batch_invariant_cpu):
    style, style_mask = two_colour_style
    photo = _photo(32, seed=3)
    content_mask = _halves(32, RED, BLUE)[None]
    # The photoreal preset leaves the texture network's filter banks out: they would paint.
    offline = CriterionConfig(weights="random", style_size=32)
    layers = photoreal_teacher(TeacherConfig(criterion=offline)).criterion.style_layers
    assert layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    criterion = build_criterion(replace(offline, style_layers=layers), [style], style_mask=style_mask)
    base = dict(size=32, iterations=40, parameterisation="pixels")
    plain = stylize(criterion, photo[None], config=TeacherConfig(**base), content_masks=content_mask)
    photoreal = stylize(criterion, photo[None], config=TeacherConfig(**base, photoreal_weight=1000.0), content_masks=content_mask)
    plain_figures = photoreal_figures(plain.images[0], photo, style, content_mask[0], style_mask)
    figures = photoreal_figures(photoreal.images[0], photo, style, content_mask[0], style_mask)
    assert figures.affine_residual < 0.5 * plain_figures.affine_residual
    assert figures.structure_kept > plain_figures.structure_kept
    # Both regions moved toward their own colour of the style.
    assert figures.min_region_colour_moved > 0.3, figures.region_colour_moved
    assert photoreal.traces[0]["photoreal"][-1] > 0 and plain.traces[0]["photoreal"][-1] == 0


def test_region_colour_moved_is_one_for_the_style_colours_and_zero_for_the_photo(two_colour_style):
    style, style_mask = two_colour_style
    photo = _photo(32)
    content_mask = _halves(32, RED, BLUE)
    assert photoreal_figures(style, photo, style, content_mask, style_mask).min_region_colour_moved > 0.9
    assert photoreal_figures(photo, photo, style, content_mask, style_mask).min_region_colour_moved == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- targets with masks, photoreal students


def _write_mask(mask: torch.Tensor, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(mask_image(mask), path)


@pytest.fixture(scope="module")
def masked_store(tmp_path_factory, two_colour_style):
    """A photoreal store of two photos with masks (a third photo has none), and its inputs."""
    base = tmp_path_factory.mktemp("masked")
    style, style_mask = two_colour_style
    save_image(style, base / "style.png")
    _write_mask(style_mask, base / "style_mask.png")
    for name, seed in (("a", 1), ("b", 2), ("nomask", 3)):
        save_image(_photo(32, seed=seed), base / "contents" / f"{name}.png")
    for name in ("a", "b"):
        _write_mask(_halves(32, RED, BLUE), base / "masks" / f"{name}.png")
    teacher = TeacherConfig(criterion=CriterionConfig(weights="random", style_size=32), size=32, iterations=3,
                            photoreal_weight=1000.0, parameterisation="pixels")
    lines = []
    summary = generate_targets(
        content_dir=base / "contents", style_paths=[base / "style.png"], store_root=base / "store", teacher_config=teacher,
        content_mask_dir=base / "masks", style_mask_path=base / "style_mask.png", log=lines.append,
    )
    return base, teacher, summary, lines


def test_targets_pair_masks_by_name_and_key_them_with_the_mask(masked_store):
    base, teacher, summary, lines = masked_store
    assert summary.new == 2
    assert [reason for _, reason in summary.bad] == [f"no mask of the same name in {base / 'masks'}"]
    store = TargetStore(base / "store")
    assert torch.equal(store.style_mask(), load_mask(base / "style_mask.png"))

    def run(**changes):
        settings = dict(content_dir=base / "contents", style_paths=[base / "style.png"], store_root=base / "store",
                        teacher_config=teacher, content_mask_dir=base / "masks", style_mask_path=base / "style_mask.png")
        return generate_targets(**{**settings, **changes})

    again = run()
    assert (again.new, again.present, again.config_hash) == (0, 2, summary.config_hash)
    # An edited content mask is a new target for that photo only.
    _write_mask(_halves(32, BLUE, RED), base / "masks" / "b.png")
    edited = run()
    assert (edited.new, edited.present) == (1, 1)
    # Another style mask is another teacher config.
    _write_mask(_halves(32, BLUE, RED), base / "other_mask.png")
    assert run(style_mask_path=base / "other_mask.png").config_hash != summary.config_hash


def test_a_smoothed_student_is_locally_affine_and_survives_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    smoothed = create_student("fast", smooth_output=True).eval()
    bare = smoothed.student
    photo = _photo(48)[None]
    with torch.no_grad():
        assert affine_residual(smoothed(photo)[0], photo[0]) < 0.5 * affine_residual(bare(photo)[0], photo[0])
        loaded, _ = load_student(save_student(smoothed, tmp_path / "s.safetensors"))
        assert isinstance(loaded, AffineSmoothedStudent)
        assert torch.equal(loaded(photo), smoothed(photo))


def test_students_of_a_photoreal_store_are_smoothed(masked_store, tmp_path):
    base, _, summary, _ = masked_store
    config = TrainConfig(targets=str(base / "store"), config_hash=summary.config_hash, student="fast", steps=1, batch_size=1, crop_size=32, eval_size=32,
                         warmup_steps=0, log_interval=1, eval_interval=1000, image_interval=1000, checkpoint_interval=1000,
                         device="cpu", heldout_fraction=0.0)
    result = train(config, tmp_path / "run", progress=False)
    model, _ = load_student(result.last_checkpoint)
    assert isinstance(model, AffineSmoothedStudent)
    plain = train(replace(config, smooth_output=False), tmp_path / "plain", progress=False)
    assert not isinstance(load_student(plain.last_checkpoint)[0], AffineSmoothedStudent)


def test_recolouring_by_region_gives_each_region_its_partner_colours(two_colour_style):
    style, style_mask = two_colour_style
    photo = _photo(32)
    content_mask = _halves(32, BLUE, RED)  # swapped sides: the left of the photo must take the style's blue
    recoloured = recolour_regions(photo, style, content_mask, style_mask)
    left, right = recoloured[:, :, :16].mean(dim=(1, 2)), recoloured[:, :, 16:].mean(dim=(1, 2))
    assert left[2] > 0.7 and left[0] < 0.2, left
    assert right[0] > 0.7 and right[2] < 0.2, right


def test_the_whole_distribution_transfer_gives_a_region_its_partner_colours_and_keeps_flat_areas_flat():
    """A style region of two colour clusters (sky and sand): the linear map can only give their
    average spread; the distribution transfer gives both clusters. A flat area of the photo (one
    colour) stays one colour, and the result does not depend on anything but the inputs."""
    generator = torch.Generator().manual_seed(1)
    photo = torch.rand(3, 48, 48, generator=generator) * 0.5 + 0.25
    photo[:, :16, :16] = 0.0  # clipped black
    style = torch.zeros(3, 40, 40)
    style[0, :, :20], style[2, :, 20:] = 0.9, 0.9
    style = (style + 0.02 * torch.randn(3, 40, 40, generator=generator)).clamp(0, 1)
    red, blue = torch.tensor([0.9, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.9])

    def share_near_the_clusters(image):
        pixels = image.reshape(3, -1).T
        return float((torch.minimum((pixels - red).norm(dim=1), (pixels - blue).norm(dim=1)) < 0.15).float().mean())

    linear = recolour_regions(photo, style, None, None)
    whole = recolour_regions(photo, style, None, None, whole_distribution=True)
    assert share_near_the_clusters(linear) < 0.6 < 0.85 < share_near_the_clusters(whole)
    assert float(whole[:, :16, :16].reshape(3, -1).std(dim=1).max()) == 0.0
    assert torch.equal(whole, recolour_regions(photo, style, None, None, whole_distribution=True))


def test_the_photoreal_preset_and_explicit_choices():
    config = photoreal_teacher(TeacherConfig(scales=(0.5, 1.0)))
    assert (config.photoreal_weight, config.resolved_parameterisation(), config.scales, config.init, config.smooth) == (
        DEFAULT_PHOTOREAL_WEIGHT, "pixels", (1.0,), "distribution", True
    )
    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser)
    args = parser.parse_args(["--style", "s.png", "--photoreal", "--no-smooth", "--init", "content", "--weights", "random"])
    chosen = teacher_config_from_args(args)
    assert (chosen.photoreal_weight, chosen.smooth, chosen.init) == (DEFAULT_PHOTOREAL_WEIGHT, False, "content")
    plain = teacher_config_from_args(parser.parse_args(["--style", "s.png", "--weights", "random"]))
    assert (plain.photoreal_weight, plain.smooth, plain.init) == (0.0, False, "content")
    # The photoreal teacher keeps its own balance of content against style; an explicit alpha wins.
    assert config.criterion.content_weight == chosen.criterion.content_weight == PHOTOREAL_CONTENT_WEIGHT
    assert plain.criterion.content_weight == CriterionConfig().content_weight != PHOTOREAL_CONTENT_WEIGHT
    explicit = teacher_config_from_args(parser.parse_args(["--style", "s.png", "--photoreal", "--content-weight", "3"]))
    assert explicit.criterion.content_weight == 3.0


def test_a_photoreal_student_is_not_asked_for_texture_its_teacher_does_not_paint():
    def lines(teacher_texture: float, student: dict) -> list[str]:
        summary = {
            "agreement": {"student": {"ssim": 0.8}, "content": {"ssim": 0.5}, "recoloured": {"ssim": 0.6},
                          "best_baseline": "recoloured", "beats_baselines": True},
            "ratio": {"mean": {"total": 1.0}},
            "stylisation": {"teacher": {"colour_moved": 0.8, "texture_moved": teacher_texture, "structure_kept": 0.9},
                            "student": student},
        }
        return diagnoses(summary)

    recolouring = {"colour_moved": 0.7, "texture_moved": 0.01, "structure_kept": 0.9}
    assert lines(teacher_texture=0.02, student=recolouring) == []
    assert lines(teacher_texture=0.3, student=recolouring)[0].startswith("not stylised")
    assert lines(teacher_texture=0.02, student={**recolouring, "colour_moved": 0.1})[0].startswith("not stylised")


@pytest.mark.parametrize("field", ["photoreal_weight", "matting_epsilon", "smooth_epsilon"])
def test_photoreal_settings_out_of_range_are_config_errors(field):
    from distill.core.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace("_", "[-_]")):
        TeacherConfig(**{field: -1.0})


def test_the_smoothing_window_keeps_5x5_on_small_images_and_widens_with_the_size():
    from teachers.gatys import smoothing_radius

    sizes = [32, 96, 128, 256, 512, 1024, 4096]
    radii = [smoothing_radius(size) for size in sizes]
    assert radii[:3] == [2, 2, 2]  # the measured 128 px setting, and nothing narrower below it
    assert radii == sorted(radii) and radii[-1] > radii[3] > 2
    assert radii[-1] < 4096 // 128  # slower than in proportion: small regions of large photos survive
