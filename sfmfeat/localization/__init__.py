"""Query localization: 2D–3D correspondences, pose estimation, clustering, result files
and evaluation against reference poses. Models are read through pycolmap."""
