"""Report generators and reference loops, run from the repository root as `python -m benchmarks.scripts.NAME`."""
from __future__ import annotations

import argparse
from pathlib import Path

# ../shared/data/scifact beside the repository
SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact"


def script_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every SciFact script shares: --data (a BEIR folder) and --model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=str(SCIFACT))
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    return parser
