"""Registry of official weight files, the local cache and downloads.

Files live in ``<weights dir>/<method>/<file>``. The weights dir is
``$SFMFEAT_WEIGHTS_DIR`` when set, else ``~/.cache/sfmfeat/weights``.
Each extractor class lists its files in ``Extractor.weight_files``; an extractor's
``weights`` option (a registered file name or a path) is turned into a file by
``resolve_weights``, the one place that does it.

Files whose host gives no direct link (Google Drive, OneDrive pages) are ``manual``: a
missing one raises a WeightsError with the link and the note, and nothing is downloaded.
A download enters the cache only after its checksum (when known) and its format (an HTML
page is never a weight file; a ``torch`` file must load with ``torch.load``) are checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_path
from .errors import WeightsError

logger = logging.getLogger(__name__)

ENV_VAR = "SFMFEAT_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightFile:
    method: str          # folder name under the weights dir, e.g. "d2net"
    filename: str        # e.g. "d2_tf.pth"
    url: str             # official download address
    licence: str         # licence of the weight file itself
    sha256: str | None = None
    non_commercial: bool = False
    note: str = ""
    manual: bool = False    # no direct download (a web page): the user fetches it by hand
    format: str = "torch"   # torch | t7 | mat: what a download must load as

    @property
    def relative_path(self) -> str:
        return f"{self.method}/{self.filename}"


def weights_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sfmfeat" / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(entry: WeightFile, download: bool = True) -> Path:
    """The local path of ``entry``, downloading it into the cache when missing."""
    path = weights_dir() / entry.method / entry.filename
    if path.is_file():
        return path
    if entry.manual:
        raise WeightsError(
            f"weight file {path} not found and it cannot be downloaded automatically: "
            f"download it by hand from {entry.url}"
            + (f" ({entry.note})" if entry.note else "")
            + f", then `sfmfeat weights install FILE`, or set {ENV_VAR}")
    if not download:
        raise WeightsError(
            f"weight file {path} not found; download it from {entry.url} "
            f"or set {ENV_VAR} to a folder holding {entry.relative_path}"
        )
    _download(entry, path)
    return path


def resolve_weights(value: str, entries: Iterable[WeightFile],
                    method: str) -> tuple[Path, str]:
    """The file of an extractor's ``weights`` field and its identity for config hashes.

    ``value`` is the file name of one of ``entries`` (the method's registered files, fetched
    into the cache when missing) or a path to a file. The identity is ``weights_identity``'s.
    """
    entry = _registered(value, entries)
    path = resolve(entry) if entry is not None else _user_file(value, entries, method)
    return path, weights_identity(value, entries, method)


def weights_identity(value: str, entries: Iterable[WeightFile], method: str) -> str:
    """The registered relative path, or ``sha256:<digest>`` of a user's file, so custom
    weights never share the official config hash. Downloads nothing."""
    entry = _registered(value, entries)
    if entry is not None:
        return entry.relative_path
    return f"sha256:{sha256_of(_user_file(value, entries, method))}"


def _registered(value: str, entries: Iterable[WeightFile]) -> WeightFile | None:
    return next((e for e in entries if e.filename == value), None)


def _user_file(value: str, entries: Iterable[WeightFile], method: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"{method}: weight file {path} not found (weights={value!r} is neither a "
            "registered file: " + ", ".join(sorted({e.filename for e in entries}))
            + ", nor an existing file)")
    return path


def _download(entry: WeightFile, path: Path) -> None:
    from .progress import tqdm

    if entry.non_commercial:
        logger.warning("%s is licensed %s: non-commercial use only", entry.relative_path,
                       entry.licence)
    logger.info("downloading %s from %s", entry.relative_path, entry.url)
    try:
        with atomic_path(path, parents=True) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=entry.filename) as bar:
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
            if entry.sha256 and sha256_of(tmp) != entry.sha256:
                raise WeightsError(
                    f"checksum mismatch for {entry.url}: expected sha256 {entry.sha256}; "
                    "the download is corrupt or the file changed upstream"
                )
            check_format(tmp, entry)
    except OSError as err:
        raise WeightsError(
            f"cannot download {entry.url} ({err}); fetch it by hand into {path} "
            f"or set {ENV_VAR}"
        ) from err


def check_format(path: Path, entry: WeightFile) -> None:
    """Raise WeightsError unless ``path`` holds ``entry.format`` (never an HTML page)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<!--")):
        raise WeightsError(
            f"{entry.url} returned a web page, not {entry.filename}; download the file by "
            f"hand and install it with `sfmfeat weights install FILE`")
    if entry.format == "torch":
        load_torch_checkpoint(path)
    elif entry.format == "t7":
        import torchfile

        try:
            torchfile.load(str(path))
        except Exception as err:  # torchfile raises many types on foreign bytes
            raise WeightsError(f"{entry.url}: not a Torch7 file ({err})") from err
    elif entry.format == "mat" and not head.startswith(b"matlab"):
        raise WeightsError(f"{entry.url}: not a MATLAB .mat file")


def copy_into_cache(entry: WeightFile, source: Path) -> Path:
    """Install a file the user downloaded by hand; checks the checksum when known and the
    format."""
    if entry.sha256 and sha256_of(source) != entry.sha256:
        raise WeightsError(f"{source}: sha256 differs from the official {entry.filename}")
    check_format(source, entry)
    target = weights_dir() / entry.method / entry.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def load_torch_checkpoint(path: Path) -> object:
    """``torch.load`` on CPU with a WeightsError naming the file when it is not a checkpoint."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError,
            OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({reason})") from err


def load_state_dict_strict(module, state_dict: dict, source: Path | str) -> None:
    """``module.load_state_dict(strict=True)`` with missing/unexpected keys and shape
    mismatches named in a WeightsError."""
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{source}: expected a state dict, got {type(state_dict).__name__}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches {_short(wrong_shape)}")
    if problems:
        raise WeightsError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(problems)
            + " (wrong file or wrong variant?)"
        )
    module.load_state_dict(state_dict, strict=True)


def _short(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
