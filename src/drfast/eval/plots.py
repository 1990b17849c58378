"""A training run's curves over steps, from its train_log.jsonl: what `drfast plot RUN_DIR` draws.

Panels (only those with data): the training loss; retrieval quality (ADORE's per-step `mrr10` of
the batch's retrieved lists, `train_mrr10` of the overlap diagnostic, `eval_MRR@10` / `eval_nDCG@10`
of the periodic evaluation); the static/dynamic negative overlap `static_overlap`
(drfast.diagnostics). Drawn with matplotlib's Agg renderer: no display needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from drfast.common.atomic import write_file_atomic
from drfast.common.errors import UsageError

__all__ = ["plot_run", "find_train_log", "read_train_log", "save_figure"]

# (panel title, y label, [(log key, legend label, line style)])
PANELS = (
    ("Training loss", "loss", [("loss", "loss (per step)", dict(lw=1.0))]),
    ("Retrieval quality", "score", [
        ("mrr10", "MRR@10 of the step's batch (ADORE)", dict(lw=0.8, alpha=0.45)),
        ("train_mrr10", "training MRR@10 (sampled queries)", dict(lw=1.6, marker="o", ms=3)),
        ("eval_MRR@10", "eval MRR@10", dict(lw=1.6, marker="s", ms=3)),
        ("eval_nDCG@10", "eval nDCG@10", dict(lw=1.6, marker="^", ms=3)),
    ]),
    ("Static vs dynamic negatives", "overlap", [
        ("static_overlap", "|static ∩ dynamic top-K| / |static|", dict(lw=1.6, marker="o", ms=3)),
    ]),
)


def find_train_log(run_dir: str | os.PathLike) -> Path:
    """RUN_DIR/train_log.jsonl, or RUN_DIR/run/train_log.jsonl for a `drfast adore` / `drfast star`
    OUTPUT folder."""
    folder = Path(run_dir)
    for path in (folder / "train_log.jsonl", folder / "run" / "train_log.jsonl"):
        if path.is_file():
            return path
    raise UsageError("run_dir", f"no train_log.jsonl in {folder} or {folder / 'run'}")


def read_train_log(path: str | os.PathLike) -> List[dict]:
    """The records of a train_log.jsonl. A last line cut short (a run still writing, or killed
    mid-write) is skipped; any other line that is not a JSON object is an error."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # no newline after it: not finished
                continue
            raise ValueError(f"{path}:{lineno}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with an integer \"step\"")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: the log has no records (has the run made a step yet?)")
    return records


def _series(records: List[dict], key: str) -> Tuple[List[int], List[float]]:
    points = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str | os.PathLike, output: Optional[str | os.PathLike] = None) -> Path:
    """Draw the run's curves to `output` (default RUN_DIR/training.png; the format follows the
    suffix) and return its path. RUN_DIR is a run folder or a `drfast adore` / `drfast star` OUTPUT."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no pyplot, no display

    log = find_train_log(run_dir)
    records = read_train_log(log)
    panels: List[Tuple[str, str, Dict[str, tuple]]] = []
    for title, ylabel, curves in PANELS:
        found = {key: (label, style, _series(records, key)) for key, label, style in curves}
        found = {key: value for key, value in found.items() if value[2][0]}
        if found:
            panels.append((title, ylabel, found))
    if not panels:
        keys = sorted({k for r in records for k in r})
        raise ValueError(f"{log}: no curve to plot (keys in the log: {', '.join(keys)})")

    fig = Figure(figsize=(7.5, 2.6 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, ylabel, found) in zip(axes, panels):
        for label, style, (steps, values) in found.values():
            ax.plot(steps, values, label=label, **style)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if title != "Training loss":
            ax.legend(fontsize=8, loc="best")
        if title == "Static vs dynamic negatives":
            ax.set_ylim(-0.02, 1.02)  # a share: the whole range shows how far it has fallen
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(str(Path(run_dir)), fontsize=9)

    return save_figure(fig, Path(output) if output is not None else Path(run_dir) / "training.png")


def save_figure(fig, out: Path) -> Path:
    """Writes a matplotlib Figure atomically; the format follows the suffix (default png)."""
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise UsageError("output", f"{out} has an image format matplotlib cannot write ({fmt!r}); use .png, .pdf "
                         "or .svg")
    return write_file_atomic(out, lambda f: fig.savefig(f, format=fmt, dpi=120))  # never half an image


# ---- Figure 3 ------------------------------------------------------------------------------------
def plot_errors(summary: Dict, path: str | os.PathLike, title: str = "") -> Path:
    """Figure 3 of the paper for total and top-K errors: the share of queries in each decade bin of
    per-query errors (bars) and the bin's share of all errors (line). Written atomically as PNG."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no pyplot, no display

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    names = {"total": "total pairwise errors", "topk": f"top-{summary['k']} pairwise errors"}
    for ax, kind in zip(axes, ("total", "topk")):
        bins = summary["distribution"][kind]
        x = np.arange(len(bins))
        bars = ax.bar(x, [100 * b["query_share"] for b in bins], color="#7aa6d6")
        ax.set_xticks(x, [_bin_label(b) for b in bins], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel(f"{names[kind]} per query")
        ax.set_ylabel("share of queries (%)")
        twin = ax.twinx()
        (line,) = twin.plot(x, [100 * b["error_share"] for b in bins], color="#c0392b", marker="o")
        twin.set_ylabel("share of all errors (%)")
        twin.set_ylim(0, 105)
        mean = summary[f"mean_{kind}_errors"]
        hardest = ", ".join(f"hardest {p}: {100 * s:.0f}%" for p, s in list(summary["hardest_share"][kind].items())[:3])
        ax.set_title(f"mean {mean:,.1f} per query\n{hardest} of errors", fontsize=9)
        ax.legend([bars, line], ["queries", "errors"], loc="upper center", fontsize=8)
    fig.suptitle(f"Pairwise errors over {summary['queries']:,} queries" + (f": {title}" if title else ""),
                 fontsize=10)
    return save_figure(fig, Path(path))


def _bin_label(b: Dict) -> str:
    if b["low"] == 0:
        return "0"
    if b["low"] < 1000:
        return f"{b['low']}-{b['high'] - 1}"
    return f"1e{len(str(b['low'])) - 1}-1e{len(str(b['high'])) - 1}"
