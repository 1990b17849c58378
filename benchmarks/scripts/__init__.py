"""Report generators: run each as `python -m benchmarks.scripts.NAME [--help]` from the repository root."""
