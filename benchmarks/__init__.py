"""drfast's speed benchmarks: pytest-benchmark suites (bench_*.py, run with `python -m pytest benchmarks`)
and report scripts (scripts/, run as `python -m benchmarks.scripts.NAME` from the repository root)."""
