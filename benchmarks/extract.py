"""Run every extractor benchmark (``benchmarks/extract_<method>.py``), one after another.

    python benchmarks/extract.py [METHOD ...]      # e.g. d2net aliked; default: all

Each per-method script times sfmfeat's extractor on CPU at 1024×768 (and other sizes where
its issue asks) against the official implementation measured in the same run when a
checkout of it is available, and prints the ratios; see each script's docstring for its
options and for how the official code is located.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("extract_*.py"))
    wanted = set(sys.argv[1:])
    if wanted:
        scripts = [s for s in scripts if s.stem.removeprefix("extract_") in wanted]
        if not scripts:
            sys.stderr.write(f"no benchmark for {', '.join(sorted(wanted))}; available: "
                             + ", ".join(s.stem.removeprefix("extract_")
                                         for s in sorted(HERE.glob("extract_*.py"))) + "\n")
            return 2
    failed = []
    for script in scripts:
        sys.stdout.write(f"\n=== {script.name} ===\n")
        sys.stdout.flush()
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(script.name)
    if failed:
        sys.stderr.write(f"failed: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
