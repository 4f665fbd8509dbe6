"""``python -m bench [SECTION ...] [--tiny] [--out PATH]``: run benchmark sections.

A section is a module ``bench.<name>`` with ``run(tiny: bool) -> str``, which prints its
figures as it measures them and returns its Markdown table. The full run writes each section
between markers in ``bench/RESULTS.md``, leaving the other sections there as they are;
``--tiny`` is a smoke test that writes only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

#: Section name → module; add yours here (each module defines ``run(tiny: bool) -> str``).
SECTIONS = {
    "sampler": "bench.sampler",
    "training": "bench.training",
    "scheduler": "bench.scheduler",
    "gpu": "bench.gpu",
}

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nWritten by `python -m bench`; each section by its own run.\n"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block of section ``name`` in the results file."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- section: {name} -->\n{body.rstrip()}\n<!-- /section: {name} -->"
    pattern = re.compile(rf"<!-- section: {name} -->.*?<!-- /section: {name} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {list(SECTIONS)}")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny sizes, no file")
    parser.add_argument("--out", type=Path, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; valid: {list(SECTIONS)}")
    out = args.out or (None if args.tiny else RESULTS)
    for name in args.sections or list(SECTIONS):
        print(f"== {name} ==", flush=True)
        start = time.perf_counter()
        body = importlib.import_module(SECTIONS[name]).run(tiny=args.tiny)
        seconds = time.perf_counter() - start
        stamp = (
            f"_Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s on "
            f"{platform.machine()} ({os.cpu_count()} CPUs), torch {torch.__version__}, "
            f"Python {platform.python_version()}"
            f"{', --tiny' if args.tiny else ''}._"
        )
        print(f"{name}: {seconds:.1f} s", flush=True)
        if out is not None:
            write_section(out, name, f"## {name}\n\n{stamp}\n\n{body}")


if __name__ == "__main__":
    main(sys.argv[1:])
