"""`python -m bench [NAME ...]`: run every benchmark (or the named ones) and write bench/results/NAME.json.

A benchmark is a module `bench/bench_<name>.py` with a function `run() -> dict`. Every figure it reports is
measured in the same run as its baseline, so ratios stay meaningful on any machine.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}")
        return 2
    if not names:
        print("no benchmarks in bench/")
        return 1
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.monotonic()
        result = module.run()
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"[{name}] {time.monotonic() - started:.1f}s -> {out.relative_to(HERE.parent)}")
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
