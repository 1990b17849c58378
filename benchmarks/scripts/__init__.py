"""Report generators and reference loops, run from the repository root as `python -m benchmarks.scripts.NAME`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

DATA_ENV = "DRFAST_DATA"  # a folder holding the BEIR collections (scifact/, vaswani/)


def data_folder(name: str) -> Optional[Path]:
    """$DRFAST_DATA/NAME, or None when the variable is unset."""
    root = os.environ.get(DATA_ENV)
    return Path(root) / name if root else None


def script_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every SciFact script shares: --data (a BEIR folder; default $DRFAST_DATA/scifact) and --model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    scifact = data_folder("scifact")
    parser.add_argument("--data", default=None if scifact is None else str(scifact),
                        help=f"a BEIR folder (default: ${DATA_ENV}/scifact)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    return parser
