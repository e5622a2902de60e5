"""``sfmfeat weights``: list the official weight files and where they are looked for."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="official weight files: list, install")
    verbs = p.add_subparsers(dest="weights_verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="every registered weight file, licence, status")
    listing.set_defaults(func=_run_list)
    from .weights_convert import add_convert_parser

    add_convert_parser(verbs)   # sfmfeat weights convert contextdesc ARCHIVE_OR_DIR


def all_weight_files():
    from ..extractors import extractor_classes

    seen = {}
    for cls in extractor_classes():
        for entry in cls.weight_files:
            seen.setdefault(entry.relative_path, entry)
    return list(seen.values())


def _run_list(args) -> int:
    from ..weights import weights_dir

    root = weights_dir()
    rows = []
    for entry in all_weight_files():
        present = (root / entry.relative_path).is_file()
        licence = entry.licence + (" (non-commercial)" if entry.non_commercial else "")
        rows.append((entry.relative_path, "present" if present else "missing", licence,
                     entry.url))
    sys.stdout.write(f"weights dir: {root} (set SFMFEAT_WEIGHTS_DIR to change)\n")
    for row in rows:
        sys.stdout.write("  ".join(row) + "\n")
    return 0
