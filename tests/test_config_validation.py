"""Every config validates itself: random ``--conf`` overrides on every preset give a
ConfigError naming the field, or a valid config, and a run on a tiny image that either
succeeds or stops with a one-line sfmfeat error (never a ValueError, AssertionError or a
torch RuntimeError)."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import require_shared
from helpers import build_weights_dir
from sfmfeat.config import apply_overrides, parse_overrides
from sfmfeat.errors import ConfigError, SfmfeatError
from sfmfeat.extractors import PRESET_MODULES, available_presets, resolve_spec
from sfmfeat.extractors.d2net import D2NetConfig
from sfmfeat.extractors.disk import DiskConfig
from sfmfeat.extractors.sift import SiftConfig

PRESETS = sorted(PRESET_MODULES) + ["deepdesc+sift", "caps+d2net-ss"]

# what a user may type after --conf KEY=
values = st.one_of(
    st.integers(-5, 70000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["none", "true", "false", "abc", "", "[1, 2]", "0.5,1,2", "l2", "torch",
                     "split1", "aliked-n32", "contextdesc+", "-0", "1e400", "nan"]),
    st.text(max_size=6))


def _fields(name):
    spec = resolve_spec(name)
    keys = [f.name for f in dataclasses.fields(spec.config)]
    if spec.detector is not None:
        keys += [f"detector.{f.name}" for f in dataclasses.fields(spec.detector.config)]
    return keys


@st.composite
def overrides(draw, name):
    keys = st.one_of(st.sampled_from(_fields(name)), st.sampled_from(["bogus", "detector.x"]))
    return draw(st.dictionaries(keys, values, max_size=3))


def _plausible(default):
    """Text a user would type for a field with this default: mostly valid, often at or past
    a bound (so that the run, not only the config, meets odd values)."""
    if isinstance(default, bool):
        return st.sampled_from(["true", "false"])
    if isinstance(default, int) or default is None:
        return st.one_of(st.integers(-2, 4096).map(str), st.just("none"))
    if isinstance(default, float):
        return st.floats(-1, 64, allow_nan=False).map(lambda v: f"{v:.4g}")
    if isinstance(default, tuple):
        return st.lists(st.sampled_from(["0.25", "0.5", "1", "2", "4", "5"]), min_size=1,
                        max_size=3).map(",".join)
    return st.sampled_from(WORDS)


WORDS = ["l1-root", "l2", "caffe", "torch", "fp32", "bf16", "fp16", "official",
         "receptive-field", "opencv", "d2_ots.pth", "aliked-t16.pth", "aliked-n32.pth",
         "CNN3_p8_n8_split1_072000.t7", "contextdesc+.pth", "contextdesc++_upright.pth",
         "no/such/file.pth", "abc"]


@st.composite
def plausible_overrides(draw, name):
    """Up to four overrides of real keys with mostly valid values."""
    spec = resolve_spec(name)
    defaults = {f.name: getattr(spec.config, f.name) for f in dataclasses.fields(spec.config)}
    if spec.detector is not None:
        defaults.update({f"detector.{f.name}": getattr(spec.detector.config, f.name)
                         for f in dataclasses.fields(spec.detector.config)})
    keys = draw(st.lists(st.sampled_from(sorted(defaults)), max_size=4, unique=True))
    return {key: draw(_plausible(defaults[key])) for key in keys}


def _check_valid(config):
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float):
                assert math.isfinite(item), (field.name, value)
    if getattr(config, "max_keypoints", None) is not None:
        assert config.max_keypoints >= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_overrides_give_config_error_or_valid_config(name, data):
    items = data.draw(overrides(name))
    try:
        spec = resolve_spec(name, items)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message
        # the message names the offending key (or the unknown-option list)
        assert any(key.removeprefix("detector.") in message for key in items) or not items
        return
    _check_valid(spec.config)
    if spec.detector is not None:
        _check_valid(spec.detector.config)


@settings(max_examples=25, deadline=None)
@given(items=overrides("sift"))
def test_valid_sift_overrides_run(items):
    """SIFT is cheap enough to run on every valid draw: a clean run or a ConfigError."""
    try:
        spec = resolve_spec("sift", items)
    except ConfigError:
        return
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    features = spec.build().extract(image)
    assert features.descriptors.shape[1] == 128
    assert np.isfinite(features.keypoints).all()


@pytest.fixture(scope="module")
def every_weight(tmp_path_factory):
    require_shared("fixtures/d2net/d2_tf.pth.xz")
    root = build_weights_dir(tmp_path_factory.mktemp("weights"), require_shared("weights").parent)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFMFEAT_WEIGHTS_DIR", str(root))
        yield root


TINY = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_overrides_give_a_clear_error_or_a_valid_run(name, data, every_weight):
    """Every preset runs on a 64×48 image with every valid draw (derandomised: the same
    draws in every run, so CI is reproducible)."""
    items = data.draw(st.one_of(overrides(name), plausible_overrides(name)))
    try:
        spec = resolve_spec(name, items)
    except ConfigError:
        event("config error")
        return
    try:
        extractor = spec.build(device="cpu")
        features = extractor.extract(TINY)
    except SfmfeatError as err:   # e.g. weights=a/path that does not exist: one line
        assert "\n" not in str(err)
        event("sfmfeat error at build or run")
        return
    event("run with keypoints" if len(features) else "run without keypoints")
    assert np.isfinite(features.keypoints).all() and np.isfinite(features.descriptors).all()
    assert features.descriptors.shape[0] == len(features.keypoints)
    assert len(features) == 0 or features.descriptors.shape[1] > 0
    assert ((features.keypoints >= -0.5) & (features.keypoints <= (63.5, 47.5))).all()


@pytest.mark.parametrize("config, key, value, words", [
    (SiftConfig(), "max_keypoints", "0", ["SiftConfig.max_keypoints=0", ">= 1"]),
    (SiftConfig(), "normalization", "l3", ["normalization='l3'", "l1-root, l2"]),
    (SiftConfig(), "contrast_threshold", "nan", ["contrast_threshold", "a number"]),
    (SiftConfig(), "upright", "maybe", ["upright='maybe'", "true or false"]),
    (DiskConfig(), "nms_window", "4", ["DiskConfig.nms_window=4", "odd"]),
    (DiskConfig(), "max_keypoints", "1.5", ["max_keypoints='1.5'", "an integer or None"]),
    (D2NetConfig(), "scales", "0.5,-1", ["scales=(0.5, -1.0)", "each > 0"]),
    (D2NetConfig(), "weights", "d3.pth", ["weights='d3.pth'", "d2_tf.pth"]),
])
def test_error_names_field_and_allowed_values(config, key, value, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(config, parse_overrides([f"{key}={value}"]))
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("name, overrides, words", [
    ("r2d2", {"min_size": "2000"}, ["min_size=2000, max_edge=1024", "min_size must be <= max_edge"]),
    ("r2d2", {"max_edge": "200"}, ["min_size=256, max_edge=200"]),
    ("r2d2", {"min_scale": "0.9", "max_scale": "0.5"}, ["min_scale=0.9, max_scale=0.5"]),
    ("sift-upright", {"max_orientations": "2"}, ["upright=True, max_orientations=2"]),
    ("contextdesc++-local", {"inverse_distance": "true"}, ["context=False, inverse_distance=True"]),
    ("deepdesc", {"detector.upright": "true", "detector.max_orientations": "1"},
     ["SiftConfig: upright=True, max_orientations=1"]),
])
def test_fields_that_interact_are_checked_together(name, overrides, words):
    """Combinations that would run but silently do nothing (no R2D2 level ever processed)
    or ignore a field are refused, naming every field involved."""
    with pytest.raises(ConfigError) as err:
        resolve_spec(name, overrides)
    for word in words:
        assert word in str(err.value)


def test_python_values_are_checked_too():
    with pytest.raises(ConfigError, match="max_edge=-3"):
        SiftConfig(max_edge=-3)
    with pytest.raises(ConfigError, match="expected true or false"):
        SiftConfig(upright=1)
    assert SiftConfig(sigma=2).sigma == 2.0 and isinstance(SiftConfig(sigma=2).sigma, float)


def test_every_preset_config_is_valid():
    for name, (_, config) in available_presets().items():
        assert dataclasses.replace(config) == config, name
