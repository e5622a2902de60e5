"""The ``sfmfeat`` command line: a thin layer over the Python API.

Each module in ``sfmfeat.commands`` contributes verbs through ``register(subparsers)``;
the parser it adds sets ``func`` to a callable taking the parsed arguments.
Any ``SfmfeatError`` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Callable

from . import __version__, commands
from .errors import SfmfeatError

logger = logging.getLogger("sfmfeat")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfmfeat", description="Learned local features for COLMAP, through pycolmap.")
    parser.add_argument("--version", action="version", version=f"sfmfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(subparsers)
    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log levels for sfmfeat and pycolmap; ``quiet`` also silences the progress bars
    (``sfmfeat.progress``) and pycolmap's own error lines (ours say what failed)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
                        datefmt="%H:%M:%S")
    try:
        import pycolmap

        pycolmap.logging.minloglevel = 0 if verbose else 3 if quiet else 2
    except (ImportError, AttributeError):
        pass


def describe_os_error(err: OSError) -> str:
    """One line naming the path(s) and the cause of an OSError (disk full, permission,
    read-only file system, a file where a folder is expected, ...)."""
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    if not paths:  # HDF5 puts the file name into its (multi-line) message
        named = re.search(r"(?:file)?name = '([^']+)'", str(err))
        paths = named.group(1) if named else ""
    if err.errno and paths:
        cause = os.strerror(err.errno)
    else:
        cause = err.strerror or str(err) or type(err).__name__
    code = errno.errorcode.get(err.errno or -1)
    text = " ".join((f"{paths}: {cause}" if paths else cause).split())
    return f"{text} ({code})" if code else text


def run_guarded(program: str, job: Callable[[], int | None]) -> int:
    """Run ``job``; an SfmfeatError or an OSError becomes one line on stderr and exit status
    2, an interruption exit status 130. Used by the CLI and by every ``pipelines`` module."""
    try:
        result = job()
    except SfmfeatError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{program}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    setup_logging(args.verbose, args.quiet)
    return run_guarded(f"sfmfeat {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
