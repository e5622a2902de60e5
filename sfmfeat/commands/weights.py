"""``sfmfeat weights``: list the official weight files and where they are looked for."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="official weight files: list, install")
    verbs = p.add_subparsers(dest="weights_verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="every registered weight file, licence, status")
    listing.set_defaults(func=_run_list)
    install = verbs.add_parser("install", help="copy a hand-downloaded official file into "
                                               "the weights dir (checksum verified)")
    install.add_argument("file", type=Path, help="the downloaded weight file")
    install.add_argument("--method", help="method folder, when the file name is ambiguous")
    install.set_defaults(func=_run_install)
    download = verbs.add_parser("download", help="download registered files of a method")
    download.add_argument("method", help="method folder, e.g. d2net")
    download.set_defaults(func=_run_download)
    from .weights_convert import add_convert_parser

    add_convert_parser(verbs)   # sfmfeat weights convert contextdesc ARCHIVE_OR_DIR


def all_weight_files():
    from ..extractors import extractor_classes

    seen = {}
    for cls in extractor_classes():
        for entry in cls.weight_files:
            seen.setdefault(entry.relative_path, entry)
    from ..matchers import MATCHER_CLASSES  # learned matchers (LightGlue)

    for cls in MATCHER_CLASSES:
        for entry in cls.weight_files:
            seen.setdefault(entry.relative_path, entry)
    from ..localization.netvlad import WEIGHT_FILES as NETVLAD  # global descriptors

    for entry in NETVLAD.values():
        seen.setdefault(entry.relative_path, entry)
    return list(seen.values())


def _run_list(args) -> int:
    from ..weights import weights_dir

    root = weights_dir()
    rows = []
    for entry in all_weight_files():
        present = (root / entry.relative_path).is_file()
        status = "present" if present else (
            "missing (manual download)" if entry.manual else "missing")
        licence = entry.licence + (" (non-commercial)" if entry.non_commercial else "")
        rows.append((entry.relative_path, status, licence,
                     entry.url + (f" [{entry.note}]" if entry.manual and not present else "")))
    sys.stdout.write(f"weights dir: {root} (set SFMFEAT_WEIGHTS_DIR to change)\n")
    for row in rows:
        sys.stdout.write("  ".join(row) + "\n")
    return 0


def _run_install(args) -> int:
    from ..weights import copy_into_cache

    candidates = [e for e in all_weight_files() if e.filename == args.file.name
                  and (args.method is None or e.method == args.method)]
    if not args.file.is_file():
        raise InputError(f"{args.file} does not exist")
    if len(candidates) > 1:
        methods = ", ".join(sorted(e.method for e in candidates))
        raise InputError(f"{args.file.name} is registered for several methods ({methods}); "
                         "choose one with --method")
    if not candidates:
        known = ", ".join(sorted({e.relative_path for e in all_weight_files()}))
        where = f" for method {args.method!r}" if args.method else ""
        raise InputError(f"{args.file.name} is not a registered weight file{where}; "
                         f"registered: {known}")
    target = copy_into_cache(candidates[0], args.file)
    logger.info("installed %s", target)
    return 0


def _run_download(args) -> int:
    from ..weights import resolve

    entries = [e for e in all_weight_files() if e.method == args.method]
    if not entries:
        raise InputError(f"no registered weights for method {args.method!r}")
    for entry in entries:
        logger.info("%s -> %s", entry.relative_path, resolve(entry))
    return 0
