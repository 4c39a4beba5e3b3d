"""Start-up cost: ``import vmmove`` and ``vmmove --help``, against a bare interpreter.

Each command runs in a fresh process, ``--runs`` times; the median is reported with its
ratio to ``python -c pass`` measured in the same run. Bytecode is compiled first, as
``pip install`` does for a normal install (this matters where PYTHONDONTWRITEBYTECODE is set).

Targets (issue #3): ``import vmmove`` under 100 ms, ``vmmove --help`` under 300 ms.
Run: python benchmarks/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import compileall
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import click

import vmmove


def median_ms(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for tree in {Path(vmmove.__file__).parent, Path(click.__file__).parent.parent,
                 Path(sysconfig.get_paths()["purelib"])}:  # fmt: skip
        compileall.compile_dir(str(tree), quiet=1)
    exe = sys.executable
    cli = shutil.which("vmmove", path=str(Path(exe).parent)) or "vmmove"
    base = median_ms([exe, "-c", "pass"], args.runs)
    imp = median_ms([exe, "-c", "import vmmove"], args.runs)
    hlp = median_ms([cli, "--help"], args.runs)
    print(f"python -c pass     {base:7.1f} ms")
    print(f"import vmmove      {imp:7.1f} ms  ({imp / base:.2f}x bare; +{imp - base:.1f} ms)"
          "  target < 100 ms")  # fmt: skip
    print(f"vmmove --help      {hlp:7.1f} ms  ({hlp / base:.2f}x bare; +{hlp - base:.1f} ms)"
          "  target < 300 ms")  # fmt: skip


if __name__ == "__main__":
    main()
