"""pycolmap mapper options set through sfmfeat: checked before any work, and applied."""

from __future__ import annotations

import math

import pycolmap
import pytest

from sfmfeat.cli import main
from sfmfeat.errors import ConfigError
from sfmfeat.reconstruction.mapping import (INCREMENTAL_DEFAULTS,
                                             PRINCIPAL_POINT_MAX_STD_DEGREES,
                                             SHARED_CAMERA_MIN_IMAGES, MappingConfig,
                                             apply_mapper_options, decide_principal_point,
                                             effective_options)
from sfmfeat.reconstruction.pipeline import ReconstructionConfig, reconstruct
from sfmfeat.synthetic import SceneConfig, SyntheticScene


def test_options_reach_pycolmap_typed_and_nested():
    options = apply_mapper_options(
        pycolmap.IncrementalPipelineOptions(),
        (("ba_refine_principal_point", "true"), ("mapper.filter_max_reproj_error", "2.5"),
         ("init_num_trials", 7), ("mapper.init_min_tri_angle", 8)), "incremental")
    assert options.ba_refine_principal_point is True
    assert options.mapper.filter_max_reproj_error == 2.5
    assert options.init_num_trials == 7 and options.mapper.init_min_tri_angle == 8.0
    hierarchical = pycolmap.HierarchicalPipelineOptions()
    apply_mapper_options(hierarchical.incremental_options, (("ba_refine_focal_length", "0"),),
                         "hierarchical")
    assert hierarchical.incremental_options.ba_refine_focal_length is False


def test_sfmfeat_incremental_defaults_reach_pycolmap_and_yield_to_the_user():
    defaults = effective_options(MappingConfig())
    assert defaults == INCREMENTAL_DEFAULTS
    options = apply_mapper_options(pycolmap.IncrementalPipelineOptions(), defaults,
                                   "incremental")
    assert options.ba_global_frames_ratio == options.ba_global_points_ratio == 1.3
    assert options.ba_local_max_refinements == 1
    colmap = pycolmap.IncrementalPipelineOptions()
    assert (colmap.ba_global_frames_ratio, colmap.ba_local_max_refinements) != (1.3, 1)
    mine = effective_options(MappingConfig(options=(("ba_global_frames_ratio", "1.1"),)))
    assert len(mine) == len(INCREMENTAL_DEFAULTS)
    assert mine[-1] == ("ba_global_frames_ratio", "1.1")      # applied last: the user's wins
    assert effective_options(MappingConfig(mapper="hierarchical")) == INCREMENTAL_DEFAULTS
    assert effective_options(MappingConfig(mapper="global")) == ()


def test_the_defaults_reach_the_incremental_mapper(tmp_path, monkeypatch):
    from sfmfeat.reconstruction import mapping

    seen = []
    monkeypatch.setattr(mapping.pycolmap, "incremental_mapping",
                        lambda database, images, out, options, **callbacks:
                        seen.append(options) or {})
    for config in (MappingConfig(), MappingConfig(options=(("ba_global_points_ratio", 1.1),))):
        assert mapping._map_once(tmp_path / "db", tmp_path, tmp_path, config, 4, 0) is None
    assert seen[0].ba_global_frames_ratio == seen[0].ba_global_points_ratio == 1.3
    assert seen[1].ba_global_frames_ratio == 1.3 and seen[1].ba_global_points_ratio == 1.1


@pytest.mark.parametrize("options, message", [
    ((("ba_refine_principle_point", "1"),), "did you mean ba_refine_principal_point"),
    ((("mapper.filter_max_reproj_eror", "2"),), "did you mean mapper.filter_max_reproj_error"),
    ((("mapper", "1"),), "is not a pycolmap option"),
    ((("image_names", "a.jpg"),), "is not a pycolmap option"),
    ((("num_threads", "1"),), "is set by sfmfeat"),
    ((("mapper.random_seed", "3"),), "is set by sfmfeat"),
    ((("mapper.filter_max_reproj_error", "two"),), "expected float"),
    ((("ba_refine_focal_length", "maybe"),), "expected bool"),
    ((("init_num_trials", "2.5"),), "expected int"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as raised:
        MappingConfig(options=options)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=message):   # the pipeline checks them at once
        ReconstructionConfig(mapper_options=options)


def test_global_mapper_options_are_its_own():
    MappingConfig(mapper="global", options=(("decompose_relative_pose", "false"),))
    with pytest.raises(ConfigError, match="global mapper option 'ba_refine_principal_point'"):
        MappingConfig(mapper="global", options=(("ba_refine_principal_point", "1"),))


def test_cli_refuses_a_bad_mapper_option_before_any_work(tmp_path, capsys):
    scene = SyntheticScene(SceneConfig(num_views=3, width=160, height=120))
    scene.write_images(tmp_path / "images")
    code = main(["reconstruct", str(tmp_path / "images"), str(tmp_path / "out"),
                 "--mapper-conf", "ba_refine_principle_point=1"])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean ba_refine_principal_point" in lines[0]
    assert not (tmp_path / "out").exists()


def _principal_points(model):
    return {(camera.principal_point_x, camera.principal_point_y)
            for camera in model.cameras.values()}


def test_principal_point_is_refined_for_shared_cameras_only(tmp_path):
    # handheld: the views roll by +/- 10 degrees, which pins the principal point down
    scene = SyntheticScene(SceneConfig(num_views=SHARED_CAMERA_MIN_IMAGES, width=320,
                                       height=240, roll_degrees=10))
    scene.write_images(tmp_path / "images")

    def run(out, camera_mode, **options):
        return reconstruct(tmp_path / "images", tmp_path / out, ReconstructionConfig(
            camera_mode=camera_mode, random_seed=0, num_threads=1, camera_model="PINHOLE",
            mapper_options=tuple(options.items())))

    shared = run("shared", "single")      # one camera, 8 images: refined by default
    assert shared.summary["mapper_options"] == {**dict(INCREMENTAL_DEFAULTS),
                                               "ba_refine_principal_point": True}
    (cx, cy), = _principal_points(shared.reconstruction)
    assert (cx, cy) != (160.0, 120.0) and abs(cx - 160) < 5 and abs(cy - 120) < 5
    (std_x, std_y), = shared.summary["principal_point_std_px"].values()
    assert 0 < std_x < 1 and 0 < std_y < 1
    fixed = run("fixed", "single", ba_refine_principal_point="false")   # the user's word wins
    assert fixed.summary["mapper_options"]["ba_refine_principal_point"] == "false"
    assert _principal_points(fixed.reconstruction) == {(160.0, 120.0)}
    assert "principal_point_std_px" not in fixed.summary
    per_image = run("per-image", "per-image")   # one image per camera: kept fixed
    assert per_image.summary["mapper_options"]["ba_refine_principal_point"] is False
    assert _principal_points(per_image.reconstruction) == {(160.0, 120.0)}
    database = tmp_path / "shared" / "database.db"
    for mapper in ("global", "hierarchical"):
        assert decide_principal_point(database, MappingConfig(mapper=mapper)).options == ()
    assert decide_principal_point(database, MappingConfig()).options == (
        ("ba_refine_principal_point", True),)


def test_an_undetermined_principal_point_is_fixed_again(tmp_path, caplog):
    """Views on a level arc around one target, none rolled: their common tilt trades for
    the principal point's height, so the rule's refinement is undone and the database mapped
    with it fixed; the user's explicit word still refines it."""
    scene = SyntheticScene(SceneConfig(num_views=SHARED_CAMERA_MIN_IMAGES, width=320,
                                       height=240))
    scene.write_images(tmp_path / "images")

    def run(out, **options):
        return reconstruct(tmp_path / "images", tmp_path / out, ReconstructionConfig(
            camera_mode="single", random_seed=0, num_threads=1, camera_model="PINHOLE",
            mapper_options=tuple(options.items())))

    with caplog.at_level("WARNING", logger="sfmfeat.reconstruction.mapping"):
        level = run("level")
    assert level.summary["mapper_options"]["ba_refine_principal_point"] is False
    assert _principal_points(level.reconstruction) == {(160.0, 120.0)}
    (std_x, std_y), = level.summary["principal_point_std_px"].values()
    limit = math.tan(math.radians(PRINCIPAL_POINT_MAX_STD_DEGREES)) * 0.8 * 320
    assert std_x < limit < std_y
    warning, = [r.getMessage() for r in caplog.records if "undetermined" in r.getMessage()]
    assert "camera 1" in warning and "ba_refine_principal_point=true" in warning
    forced = run("forced", ba_refine_principal_point="true")
    assert forced.summary["mapper_options"]["ba_refine_principal_point"] == "true"
    assert _principal_points(forced.reconstruction) != {(160.0, 120.0)}
