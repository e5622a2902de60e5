"""sfmfeat: learned local features for COLMAP, through pycolmap."""

__version__ = "0.1.0"
