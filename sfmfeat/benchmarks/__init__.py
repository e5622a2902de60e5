"""Evaluation protocols that rank local features by their published figures.

- :mod:`.hpatches`: the D2-Net HPatches-sequences protocol (mean matching accuracy and
  the published ``.npy`` cache layout) plus homography-estimation accuracy.
- :mod:`.hpatches_synthetic`: HPatches-format sequences generated from any images.
- :mod:`.curves`: MMA curves drawn with OpenCV (no plotting library needed).
- :mod:`.reconstruction`: the Schönberger et al. CVPR'17 statistics, side by side.

The ``benchmarks/`` scripts at the repository root time code; this package measures quality.
"""
