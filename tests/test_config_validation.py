"""Every config validates itself: random ``--conf`` overrides on every preset give a
ConfigError naming the field, or a valid config (and, for SIFT, a valid run)."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfmfeat.config import apply_overrides, parse_overrides
from sfmfeat.errors import ConfigError
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


def test_python_values_are_checked_too():
    with pytest.raises(ConfigError, match="max_edge=-3"):
        SiftConfig(max_edge=-3)
    with pytest.raises(ConfigError, match="expected true or false"):
        SiftConfig(upright=1)
    assert SiftConfig(sigma=2).sigma == 2.0 and isinstance(SiftConfig(sigma=2).sigma, float)


def test_every_preset_config_is_valid():
    for name, (_, config) in available_presets().items():
        assert dataclasses.replace(config) == config, name
