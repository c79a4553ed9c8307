"""Typed configuration: files, overrides, validation, round trip."""

import json
from pathlib import Path

import pytest

from latentdit.config import Config, load_config
from latentdit.errors import ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = Config()
    p = tmp_path / "c.json"
    cfg.save(p)
    again = load_config(p)
    assert again == cfg
    assert Config.from_dict(json.loads(p.read_text())) == cfg


def test_toml_yaml_and_overrides(tmp_path):
    (tmp_path / "a.toml").write_text("[model]\ndepth = 3\n[train]\nsteps = 7\n")
    (tmp_path / "a.yaml").write_text("model:\n  depth: 3\ntrain:\n  steps: 7\n")
    a, b = load_config(tmp_path / "a.toml"), load_config(tmp_path / "a.yaml")
    assert a == b and a.model.depth == 3 and a.train.steps == 7
    c = load_config(tmp_path / "a.toml", ["model.depth=6", "diffusion.T0=0.01", "model.paper_entry_bound=null",
                                           "sample.sampler=em"])
    assert c.model.depth == 6 and c.diffusion.T0 == 0.01 and c.sample.sampler == "em"


def test_unknown_key_names_closest(tmp_path):
    (tmp_path / "a.toml").write_text("[model]\ndepht = 3\n")
    with pytest.raises(ConfigError, match=r"model\.depht.*model\.depth"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.stesp=3"])
    with pytest.raises(ConfigError, match="diffusion"):
        load_config(None, ["difusion.T0=0.1"])


@pytest.mark.parametrize("override,match", [
    ("diffusion.T0=0", "T0"), ("diffusion.T0=20", "T0"), ("train.steps=0", "steps"),
    ("sample.sampler=foo", "sampler"), ("model.attention=fast", "attention"), ("model.depth=two", "depth"),
    ("model.activation=relu", "activation"), ("model.pos_embed=rope", "pos_embed"),
    ("autoencoder.crop=32", "moving_mnist"), ("autoencoder.crop=-4", "crop"),
])
def test_invalid_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found|does not exist|no such"):
        load_config(tmp_path / "nope.toml")


def test_saved_configs_from_before_activation_keep_the_tanh_gelu():
    old = Config().to_dict()
    del old["model"]["activation"]
    assert Config.from_saved(old).model.activation == "gelu_tanh"  # what that network was trained with
    assert Config.from_dict(old).model.activation == "gelu"  # a new config gets today's default
    assert Config.from_saved(Config().to_dict()) == Config()


CLIPS = Path(__file__).resolve().parents[1] / "configs" / "moving_mnist.toml"


@pytest.mark.parametrize("crop", ["20", "30", "96"])
def test_clip_crop_must_hold_a_digit_fit_the_canvas_and_the_factor(crop):
    with pytest.raises(ConfigError, match="autoencoder.crop"):
        load_config(CLIPS, [f"autoencoder.crop={crop}"])


def test_sincos_positions_are_a_dit_block_option():
    with pytest.raises(ConfigError, match="pos_embed"):  # the paper block learns its own E
        load_config(CLIPS, ["model.block=paper", "train.window_frames=0", "train.window_steps=0"])
