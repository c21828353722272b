"""Configs: frozen dataclasses whose fields are checked the same way from code, YAML and the command line."""

from __future__ import annotations

import pytest

from distill.cli.train import build_parser, overrides_from
from distill.core.config import from_dict, to_dict, yaml_value
from distill.core.errors import ConfigError
from distill.objective.config import CriterionConfig
from distill.report.options import FidelityOptions
from distill.train.config import TrainConfig, resolve_config
from teachers.gatys import TeacherConfig


def test_a_wrong_type_names_the_key_the_value_and_the_type():
    with pytest.raises(ConfigError, match=r"TrainConfig option 'steps': expected int, got 'ten' \(str\)"):
        from_dict(TrainConfig, {"steps": "ten"})
    with pytest.raises(ConfigError, match=r"'lr_decay_steps': expected int or None, got 'soon'"):
        from_dict(TrainConfig, {"lr_decay_steps": "soon"})
    with pytest.raises(ConfigError, match=r"'hflip': expected bool, got 1"):
        from_dict(TrainConfig, {"hflip": 1})
    with pytest.raises(ConfigError, match=r"TeacherConfig option 'criterion.style_weight': expected float, got 'x'"):
        from_dict(TeacherConfig, {"criterion": {"style_weight": "x"}})
    with pytest.raises(ConfigError, match=r"'betas': expected 2 values"):
        from_dict(TrainConfig, {"betas": [0.9]})
    # Built in code, not only when read from a file.
    with pytest.raises(ConfigError, match=r"CriterionConfig option 'style_weight': expected float, got '10'"):
        CriterionConfig(style_weight="10")
    with pytest.raises(ConfigError, match=r"TeacherConfig option 'scales': expected tuple of float"):
        TeacherConfig(scales=[0.5, 1.0])
    with pytest.raises(ConfigError, match=r"FidelityOptions option 'max_images': expected int or None"):
        FidelityOptions(max_images=2.5)


def test_unknown_keys_and_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="unknown TrainConfig option.*: learning_rate; known: "):
        from_dict(TrainConfig, {"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="unknown TeacherConfig option.*: criterion.alpha"):
        from_dict(TeacherConfig, {"criterion": {"alpha": 1.0}})
    with pytest.raises(ValueError, match="steps must be >= 1, got -3"):
        from_dict(TrainConfig, {"steps": -3})
    with pytest.raises(ConfigError, match="style blend weights must be non-negative"):
        CriterionConfig(style_blend=(1.0, -1.0))
    with pytest.raises(ConfigError, match="--heldout-fraction must lie in"):
        FidelityOptions(heldout_fraction=1.5)


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-5\nsteps: 10\n")
    config = resolve_config(config_file=path)
    assert (config.lr, config.weight_decay, config.steps) == (0.001, 5e-5, 10)
    assert yaml_value("2e3") == 2000.0 and yaml_value("-1.5e-2") == -0.015
    assert yaml_value("null") is None and yaml_value("1e-3x") == "1e-3x" and yaml_value("7") == 7
    args = build_parser().parse_args(["--out", "run", "--set", "lr=1e-3", "--set", "config_hash=null"])
    assert overrides_from(args) == {"lr": 0.001, "config_hash": None}


def test_a_config_survives_its_round_trip():
    config = TeacherConfig(criterion=CriterionConfig(weights="random", style_blend=(3.0, 1.0)), scales=(0.5, 1.0))
    assert from_dict(TeacherConfig, to_dict(config)) == config
    assert from_dict(FidelityOptions, to_dict(FidelityOptions(embedding_layers=("relu1_1",)))).embedding_layers == ("relu1_1",)
