"""Property-based tests (hypothesis): reshape R round trip, config round trips, loader fuzzing."""

import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from latentdit.config import Config, apply_overrides, load_config
from latentdit.data.real import LoadedData, from_array, load_data
from latentdit.errors import ConfigError, DataError
from latentdit.models.reshape import Reshape, resolve_patching

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------- reshape


@st.composite
def valid_pairs(draw):
    """(d0, patch, mode) with d0 cut exactly into 2-D patches or 1-D tokens."""
    patch = draw(st.integers(1, 6))
    if draw(st.booleans()):
        side = patch * draw(st.integers(1, 6))
        return side * side, patch, draw(st.sampled_from(["2d", "auto"]))
    return patch * draw(st.integers(1, 40)), patch, "1d"


@FAST
@given(valid_pairs(), st.integers(1, 3))
def test_reshape_round_trip_for_every_valid_pair(pair, n):
    d0, patch, mode = pair
    R = Reshape(d0, patch, mode)
    assert R.num_tokens * R.token_dim == d0
    h = torch.randperm(n * d0).float().reshape(n, d0)  # distinct entries: R must be a permutation
    X = R(h)
    assert X.shape == (n, R.num_tokens, R.token_dim)
    assert torch.equal(R.inverse(X), h)
    assert torch.equal(X.flatten().sort().values, h.flatten().sort().values)
    if R.mode == "2d":  # token k is the k-th p x p patch of the row-major i x i grid
        i, g = math.isqrt(d0), math.isqrt(d0) // patch
        grid = h[0].reshape(i, i)
        for k in range(R.num_tokens):
            r, c = divmod(k, g)
            assert torch.equal(X[0, k], grid[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].flatten())


@FAST
@given(st.integers(1, 200), st.integers(1, 12), st.sampled_from(["auto", "2d", "1d"]))
def test_patching_either_fits_or_says_what_fits(d0, patch, mode):
    i = math.isqrt(d0)
    fits = {"2d": i * i == d0 and i % patch == 0, "1d": d0 % patch == 0}
    fits["auto"] = fits["2d"] or fits["1d"]
    if fits[mode]:
        assert resolve_patching(d0, patch, mode) in ("2d", "1d")
    else:
        with pytest.raises(ConfigError, match=f"d0={d0}"):
            resolve_patching(d0, patch, mode)


# ------------------------------------------------------------------------------------------- config

_names = st.sampled_from


@st.composite
def configs(draw) -> Config:
    """Random valid configurations (a subset of fields varied within their valid ranges)."""
    heads = draw(st.integers(1, 4))
    T0 = draw(st.floats(1e-5, 0.5, allow_nan=False))
    d = {
        "data": {"source": draw(_names(["gmm", "npy", "csv"])), "n": draw(st.integers(1, 10**6)),
                 "seed": draw(st.integers(0, 2**31)), "normalise": draw(_names(["minmax", "standard", "none"])),
                 "path": draw(st.one_of(st.none(), st.text("abc/._-", min_size=1, max_size=12))),
                 "conditional": draw(st.booleans())},
        "encoder": {"latent_dim": draw(st.integers(1, 16)), "init": draw(_names(["pca", "random"])),
                    "learn": draw(st.booleans())},
        "model": {"block": draw(_names(["dit", "paper"])), "heads": heads, "hidden": heads * draw(st.integers(1, 64)),
                  "attention": draw(_names(["exact", "poly", "auto"])),
                  "paper_entry_bound": draw(st.one_of(st.none(), st.floats(0.1, 10))),
                  "mlp_ratio": draw(st.floats(0.5, 8)), "class_dropout": draw(st.floats(0, 0.99))},
        "diffusion": {"T0": T0, "T": T0 + draw(st.floats(0.01, 20)), "weighting": draw(_names(["none", "sigma", "sigma2", "edm"]))},
        "optim": {"lr": draw(st.floats(1e-6, 1.0)), "schedule": draw(_names(["cosine", "constant"]))},
        "train": {"steps": draw(st.integers(1, 10**6)), "ema_decay": draw(st.floats(0, 0.9999)),
                  "device": draw(_names(["auto", "cpu"])), "amp": draw(st.booleans())},
        "sample": {"sampler": draw(_names(["em", "ei", "heun", "ddim", "dpm2m"])), "steps": draw(st.integers(1, 1000))},
    }
    return Config.from_dict(d)


def _leaves(cfg: Config):
    for section in fields(cfg):
        sub = getattr(cfg, section.name)
        for f in fields(sub):
            yield f"{section.name}.{f.name}", getattr(sub, f.name)


@pytest.mark.slow
@FAST
@given(configs())
def test_config_serialise_parse_round_trip(tmp_path_factory, cfg):
    d = tmp_path_factory.mktemp("cfg")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg.save(d / "c.json")
    assert load_config(d / "c.json") == cfg
    (d / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(d / "c.yaml") == cfg
    # every value written back as a --set override parses to itself
    sets = [f"{k}={json.dumps(v) if isinstance(v, str) or v is None else repr(v) if isinstance(v, float) else json.dumps(v)}"
            for k, v in _leaves(cfg)]
    assert load_config(None, sets) == cfg


@pytest.mark.slow
@FAST
@given(st.text(min_size=1, max_size=10).filter(lambda s: "=" not in s and "." not in s))
def test_unknown_keys_always_rejected(key):
    names = {f.name for f in fields(Config().train)}
    if key in names:
        return
    with pytest.raises(ConfigError, match="unknown config key"):
        Config.from_dict(apply_overrides({}, [f"train.{key}=1"]))


# ------------------------------------------------------------------------------------- loader fuzzing


def _check_loaded(out: LoadedData) -> None:
    assert out.x.ndim == 2 and out.x.shape[0] > 0 and out.x.shape[1] > 0
    assert torch.isfinite(out.x).all()


@FAST
@given(st.binary(max_size=400), st.sampled_from(["npy", "npz", "csv", "png", "jpg"]))
def test_loaders_on_random_bytes_raise_data_error_only(tmp_path_factory, data, kind):
    d = tmp_path_factory.mktemp("fuzz")
    if kind in ("png", "jpg"):
        (d / "imgs").mkdir()
        (d / "imgs" / f"a.{kind}").write_bytes(data)
        source, path = "images", d / "imgs"
    else:
        path = d / f"x.{kind}"
        path.write_bytes(data)
        source = kind
    try:
        _check_loaded(load_data(source, str(path)))
    except DataError as e:
        assert "\n" not in str(e)


@FAST
@given(st.binary(min_size=1, max_size=64), st.integers(0, 200))
def test_npy_with_corrupted_bytes_raises_data_error_only(tmp_path_factory, junk, where):
    d = tmp_path_factory.mktemp("fuzz")
    buf = d / "x.npy"
    np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4))
    raw = bytearray(buf.read_bytes())
    where = min(where, len(raw) - 1)
    raw[where:where + len(junk)] = junk
    buf.write_bytes(bytes(raw))
    try:
        _check_loaded(load_data("npy", str(buf)))
    except DataError as e:
        assert "\n" not in str(e)


_dtypes = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(), hnp.complex_number_dtypes(),
                    hnp.unicode_string_dtypes(max_len=3), hnp.datetime64_dtypes())


@FAST
@given(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)),
       st.one_of(st.none(), hnp.arrays(st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes()),
                                       hnp.array_shapes(min_dims=0, max_dims=2, max_side=4))))
def test_loaders_on_random_arrays_raise_data_error_only(tmp_path_factory, x, labels):
    try:
        _check_loaded(from_array(x, labels))
    except DataError as e:
        assert "\n" not in str(e)
    d = tmp_path_factory.mktemp("arr")
    np.save(d / "x.npy", x)
    np.savez(d / "x.npz", x=x, **({"labels": labels} if labels is not None else {}))
    for source in ("npy", "npz"):
        try:
            _check_loaded(load_data(source, str(d / f"x.{source}")))
        except DataError as e:
            assert "\n" not in str(e)
