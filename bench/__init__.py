"""Benchmarks: each `bench/bench_<name>.py` has `run() -> dict` and writes `bench/results/<name>.json`."""
