"""Convert official TensorFlow weight releases into sfmfeat's PyTorch state dicts.

``convert_contextdesc(source, target_dir)`` reads a ContextDesc archive (``.tar``/``.zip``
or an unpacked folder) holding ``loc.pb``/``aug.pb`` (frozen graphs) and/or a
``model.ckpt-*`` checkpoint bundle, or the retrieval model (``reg.pb`` / checkpoint), and
writes ``<variant>.pth`` (or ``retrieval_model.pth``) with no TensorFlow needed.

The ``weights convert`` verb itself lives with the ``weights`` command, which calls
``add_convert_parser``/``convert_contextdesc``; this module adds no verb of its own.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import ConfigError, InputError, WeightsError

logger = logging.getLogger(__name__)

#: archive/folder names of the official release -> sfmfeat variant name
_RELEASE_NAMES = {
    "contextdesc_pp_upright": "contextdesc++_upright",
    "contextdesc++_upright": "contextdesc++_upright",
    "contextdesc_pp": "contextdesc++",
    "contextdesc++": "contextdesc++",
    "contextdesc_p": "contextdesc+",
    "contextdesc+": "contextdesc+",
    "contextdesc": "contextdesc",
    "retrieval_model": "retrieval_model",
    "retrieval": "retrieval_model",
}


def register(subparsers) -> None:
    """No verb of its own: ``sfmfeat weights convert`` is added by the weights command."""
    return None


def add_convert_parser(weights_subparsers) -> argparse.ArgumentParser:
    """Add ``convert METHOD SOURCE [--target DIR] [--variant NAME]`` to ``sfmfeat weights``."""
    parser = weights_subparsers.add_parser(
        "convert", help="convert official TensorFlow weights (ContextDesc) to PyTorch")
    parser.add_argument("method", choices=["contextdesc"], help="method whose weights these are")
    parser.add_argument("source", help="official archive (.tar/.zip) or unpacked folder")
    parser.add_argument("--target", default=None,
                        help="output folder (default: <weights dir>/contextdesc)")
    parser.add_argument("--variant", default=None,
                        help="variant name when the archive name does not tell it: "
                             + ", ".join(sorted(set(_RELEASE_NAMES.values()))))
    parser.set_defaults(func=_run)
    return parser


def _run(args) -> int:
    path = convert_contextdesc(args.source, args.target, variant=args.variant)
    sys.stdout.write(f"{path}\n")
    return 0


def convert_contextdesc(source: str | Path, target_dir: str | Path | None = None,
                        variant: str | None = None) -> Path:
    """Convert one official ContextDesc archive or folder; returns the written ``.pth``."""
    import torch

    from ..weights import weights_dir

    source = Path(source)
    if not source.exists():
        raise InputError(f"{source} does not exist; pass the downloaded ContextDesc archive "
                         "or the folder it unpacks to")
    variant = _variant_name(source, variant)
    target = Path(target_dir) if target_dir else weights_dir() / "contextdesc"
    with tempfile.TemporaryDirectory(prefix="sfmfeat-contextdesc-") as tmp:
        folder = _unpack(source, Path(tmp)) if source.is_file() else source
        if variant == "retrieval_model":
            state = _convert_regional(folder)
        else:
            state = _convert_local_aug(folder)
    target.mkdir(parents=True, exist_ok=True)
    out = target / f"{variant}.pth"
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    logger.info("wrote %s (%d tensors)", out, len(state))
    return out


def _variant_name(source: Path, variant: str | None) -> str:
    known = sorted(set(_RELEASE_NAMES.values()))
    if variant is not None:
        if variant == "dense" or "dense" in variant.lower():
            raise ConfigError("the Dense-ContextDesc variant is not supported; use "
                              "contextdesc, contextdesc+, contextdesc++ or contextdesc++_upright")
        name = _RELEASE_NAMES.get(variant.lower())
        if name is None:
            raise ConfigError(f"unknown ContextDesc variant {variant!r}; choose one of: "
                              + ", ".join(known))
        return name
    stem = source.name.lower()
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", stem)
    if "dense" in stem:
        raise ConfigError(f"{source}: the Dense-ContextDesc variant is not supported")
    if stem in _RELEASE_NAMES:
        return _RELEASE_NAMES[stem]
    raise ConfigError(f"cannot tell the ContextDesc variant from the name {source.name!r}; "
                      "pass --variant with one of: " + ", ".join(known))


def _unpack(archive: Path, into: Path) -> Path:
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise WeightsError(f"{archive}: unsafe path {member!r} in archive")
                zf.extractall(into)
        else:
            raise WeightsError(f"{archive} is neither a tar nor a zip archive; pass the "
                               "official ContextDesc download or the folder it unpacks to")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
        raise WeightsError(f"cannot unpack {archive}: {err}") from err
    return into


def _find(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.is_file())


def _sources(folder: Path, graph_names: tuple[str, ...]) -> tuple[dict, list[str]]:
    """TF tensors from the frozen graphs present, then the checkpoint for what they lack."""
    from ..extractors.tf_reader import read_checkpoint, read_graphdef_constants

    tensors: dict[str, np.ndarray] = {}
    used: list[str] = []
    for name in graph_names:
        found = _find(folder, name)
        if found:
            tensors.update(read_graphdef_constants(found[0]))
            used.append(str(found[0]))
    indexes = _find(folder, "*.index")
    if indexes:
        ckpt = read_checkpoint(indexes[-1])
        for key, value in ckpt.items():
            tensors.setdefault(key, value)
        used.append(str(indexes[-1].with_suffix("")))
    if not used:
        raise WeightsError(f"{folder}: no {' or '.join(graph_names)} and no model.ckpt-*.index "
                           "found; is this an official ContextDesc archive?")
    return tensors, used


def state_dict_from_tf(module, tensors: dict[str, np.ndarray], source: str) -> dict:
    """The state dict of ``module`` built from TF-named ``tensors``; missing variables and
    shape mismatches are reported by TF name in one WeightsError."""
    import torch

    from ..extractors.contextdesc_nets import tf_variable_names

    own = module.state_dict()
    names = tf_variable_names(module)
    prefix = _scope_prefix(tensors, [tf for tf, _ in names.values()])
    state, missing, wrong = {}, [], []
    for key, (tf_name, layout) in names.items():
        value = tensors.get(prefix + tf_name)
        if value is None:
            missing.append(tf_name)
            continue
        value = np.asarray(value, np.float32)
        if layout == "conv" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif layout == "dense" and value.ndim == 2:
            value = value.T
        if tuple(value.shape) != tuple(own[key].shape):
            wrong.append(f"{tf_name} {tuple(value.shape)} (expected {tuple(own[key].shape)})")
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    problems = []
    if missing:
        problems.append(f"missing variable(s) {', '.join(missing[:8])}"
                        + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if wrong:
        problems.append(f"wrong shape(s) {', '.join(wrong[:8])}")
    if problems:
        raise WeightsError(f"{source} does not fit the {type(module).__name__}: "
                           + "; ".join(problems) + " (wrong archive or variant?)")
    return state


def _scope_prefix(tensors: dict, wanted: list[str]) -> str:
    """'' when the names match as they are, else a unique outer scope (e.g. 'model/')."""
    if not wanted or wanted[0] in tensors:
        return ""
    probe = wanted[0]
    prefixes = {k[: -len(probe)] for k in tensors if k.endswith("/" + probe)}
    return prefixes.pop() if len(prefixes) == 1 else ""


def _convert_local_aug(folder: Path) -> dict:
    from ..extractors.contextdesc_nets import ContextDescNet

    tensors, used = _sources(folder, ("loc.pb", "aug.pb"))
    return state_dict_from_tf(ContextDescNet(), tensors, " + ".join(used))


def _convert_regional(folder: Path) -> dict:
    from ..extractors.contextdesc_nets import RegionalResNet50

    tensors, used = _sources(folder, ("reg.pb",))
    return state_dict_from_tf(RegionalResNet50(), tensors, " + ".join(used))
