"""The lazy extractor registry and the neutral types module."""

import inspect
import pkgutil
import subprocess
import sys

import sfmfeat.extractors as registry
from sfmfeat.extractors.base import Extractor


def test_preset_table_matches_every_extractor_class():
    defined = {}
    for info in pkgutil.iter_modules(registry.__path__):
        module = __import__(f"sfmfeat.extractors.{info.name}", fromlist=["_"])
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (issubclass(cls, Extractor) and cls.__module__ == module.__name__
                    and not inspect.isabstract(cls)):
                for preset in cls.presets:
                    assert preset not in defined, f"{preset} defined twice"
                    defined[preset] = info.name
    assert defined == registry.PRESET_MODULES


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                          "print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_preset_names_and_sift_need_no_network_module():
    loaded = _modules_after(
        "from sfmfeat.extractors import preset_names, create_extractor\n"
        "assert 'disk' in preset_names()\n"
        "import numpy as np\n"
        "create_extractor('sift').extract(np.zeros((64, 64, 3), np.uint8))\n"
        "import sfmfeat.store, sfmfeat.extract")
    networks = {m for m in loaded if m.startswith("sfmfeat.extractors.")}
    assert networks == {"sfmfeat.extractors.base", "sfmfeat.extractors.sift"}
    assert "torch" not in loaded


def test_store_and_matchers_do_not_import_extractors():
    loaded = _modules_after("import sfmfeat.store, sfmfeat.matchers")
    assert not {m for m in loaded if m.startswith("sfmfeat.extractors")}


def test_base_keeps_features_reexport():
    from sfmfeat.extractors.base import Features as Reexported
    from sfmfeat.features import Features

    assert Reexported is Features
