"""Everything that talks to COLMAP (through pycolmap): databases, verification, mapping,
triangulation from known poses and dense MVS."""
