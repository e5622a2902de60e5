"""--mapper hierarchical (issue 16): pycolmap's hierarchical pipeline on a synthetic scene
cut into several clusters, mapped one by one and merged into one model."""

from __future__ import annotations

import pycolmap
import pytest

from sfmfeat.errors import ReconstructionError
from sfmfeat.reconstruction.mapping import MAPPERS, MappingConfig, run_mapping
from sfmfeat.reconstruction.pipeline import ReconstructionConfig, reconstruct
from sfmfeat.synthetic import SceneConfig, SyntheticScene

NUM_VIEWS = 18


@pytest.mark.slow
def test_hierarchical_mapping_partitions_the_scene_and_merges_one_model(tmp_path, capfd):
    scene = SyntheticScene(SceneConfig(num_views=NUM_VIEWS, width=320, height=240,
                                       arc_degrees=5 * NUM_VIEWS))
    scene.write_images(tmp_path / "images")
    result = reconstruct(tmp_path / "images", tmp_path / "out",
                         ReconstructionConfig(camera_mode="single", random_seed=0,
                                              pairs="sequential", sequential_window=5,
                                              mapper="hierarchical"))
    assert result.summary["num_registered"] == NUM_VIEWS   # one cluster: the whole scene
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0   # COLMAP's log says when clusters are merged
    try:
        capfd.readouterr()
        model = run_mapping(tmp_path / "out" / "database.db", tmp_path / "images",
                            tmp_path / "hierarchical",
                            MappingConfig(mapper="hierarchical", random_seed=0,
                                          leaf_max_num_images=NUM_VIEWS // 3,
                                          cluster_image_overlap=3)).reconstruction
        log = capfd.readouterr().err
    finally:
        pycolmap.logging.minloglevel = level
    assert "Merged clusters" in log, log[-2000:]   # it was partitioned
    assert model.num_reg_images() == NUM_VIEWS
    assert model.num_points3D() > 0.8 * result.summary["num_points3D"]
    assert model.compute_mean_reprojection_error() < 1.0
    assert (tmp_path / "hierarchical" / "points3D.bin").is_file()


def test_hierarchical_is_a_mapper_and_its_options_are_checked():
    assert "hierarchical" in MAPPERS
    with pytest.raises(ReconstructionError, match="leaf_max_num_images=1"):
        MappingConfig(mapper="hierarchical", leaf_max_num_images=1)
