from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "sfmfeat" / "__init__.py").read_text(), version)

setup(
    name="sfmfeat",
    version=version["__version__"],
    description="Learned local features (D2-Net, CAPS, ContextDesc, DeepDesc, DISK, ALIKED, "
                "R2D2, SIFT) in COLMAP through pycolmap",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sfmfeat", "sfmfeat.*", "pipelines", "pipelines.*"]),
    install_requires=[
        "pycolmap>=4.2,<4.3",
        "torch>=2.1",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "h5py>=3.8",
        "tqdm>=4.60",
        "scipy>=1.10",
        "pillow>=9.0",
        "torchfile>=0.1.0",
        "plotly>=5.0",
    ],
    # ray: --executor ray (sfmfeat.executors); in the test extra so CI runs its tests
    extras_require={"ray": ["ray>=2.9"],
                    "test": ["pytest>=7", "hypothesis>=6", "ray>=2.9"]},
    entry_points={"console_scripts": ["sfmfeat=sfmfeat.cli:main"]},
)
