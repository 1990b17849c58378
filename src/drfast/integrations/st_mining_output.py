"""The output side of `mine_hard_negatives` (sentence-transformers 6.3.0's formats and printed summary).

`Texts` and `Filters` hold a run's de-duplicated texts and its candidate filters; `build_output` turns
the mined negatives into the columns of ST's four output formats, and `print_summary` prints ST's
statistics table and notes line for line (ST prints them, so this prints too, to match).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NEG_INF = -float("inf")


def console(line: str) -> None:
    """One line of the console output `mine_hard_negatives(verbose=True)` promises. sentence-transformers
    (6.3.0) prints these lines to stdout, and users' scripts and our tests read them there, so this is the
    one place in the library that prints instead of logging (the drop-in's contract)."""
    print(line)


@dataclass(frozen=True)
class Filters:
    """The candidate filters of one mining run (ST's arguments after validation and deprecations)."""

    range_min: int
    range_max: int
    max_score: Optional[float]
    min_score: Optional[float]
    absolute_margin: Optional[float]
    relative_margin: Optional[float]
    num_negatives: int
    sampling_strategy: str


@dataclass
class Texts:
    """Queries, positives and corpus after ST's de-duplication (rows of `corpus` are search rows)."""

    queries: list          # unique queries, in order of first appearance
    corpus: list           # unique texts: the given corpus, then positives not in it
    positive_indices: list  # per unique query: its unique positives' corpus rows
    self_rows: list        # per unique query: the corpus row equal to the query text, or -1
    positives: list        # flattened positives (texts), grouped by query
    all_queries: list      # the query of each flattened positive

    @property
    def n_positives(self) -> list:
        return [len(p) for p in self.positive_indices]


def build_output(output_format, output_scores, anchor_col, positive_col, texts: Texts, indices, negative_scores,
                 positive_scores, num_negatives, dataset_len):
    """The output columns of ST's format, and what the summary needs (negative and difference scores, the
    maximum possible number of rows, and "rows": the flattened positive behind each output row)."""
    corpus = texts.corpus
    per_row = torch.tensor(texts.n_positives)
    if output_format == "labeled-pair":
        return labeled_pair(output_scores, anchor_col, positive_col, texts, indices, negative_scores,
                            positive_scores, num_negatives, dataset_len)
    indices = indices.repeat_interleave(per_row, dim=0)
    negative_scores = negative_scores.repeat_interleave(per_row, dim=0)
    keep = negative_scores != NEG_INF
    pos_rep = positive_scores.unsqueeze(1).expand(-1, num_negatives)
    if output_format == "triplet":
        rows = keep.nonzero(as_tuple=True)[0]
        data = {anchor_col: [texts.all_queries[r] for r in rows.tolist()],
                positive_col: [texts.positives[r] for r in rows.tolist()],
                "negative": [corpus[i] for i in indices[keep].tolist()]}
        if output_scores:
            data["scores"] = torch.stack([pos_rep[keep], negative_scores[keep]], dim=1).tolist()
        return data, {"negative": negative_scores[keep], "difference": pos_rep[keep] - negative_scores[keep],
                      "maximum": keep.numel(), "rows": rows}
    if output_format == "n-tuple":
        keep_row = keep.all(dim=1)
        rows = keep_row.nonzero(as_tuple=True)[0]
        data = {anchor_col: [texts.all_queries[r] for r in rows.tolist()],
                positive_col: [texts.positives[r] for r in rows.tolist()],
                **{f"negative_{i}": [corpus[j] for j in column]
                   for i, column in enumerate(indices[keep_row].T.tolist(), start=1)}}
        if output_scores:
            data["scores"] = torch.cat([positive_scores[keep_row].unsqueeze(-1), negative_scores[keep_row]],
                                       dim=1).tolist()
        negatives = negative_scores[keep_row].flatten()
        return data, {"negative": negatives, "difference": pos_rep[keep_row].flatten() - negatives,
                      "maximum": keep_row.size(0), "rows": rows}
    rows = keep.any(dim=1).nonzero(as_tuple=True)[0]  # labeled-list
    data = {anchor_col: [texts.all_queries[r] for r in rows.tolist()],
            positive_col: [[texts.positives[r]] + [corpus[j] for j in indices[r][keep[r]].tolist()]
                           for r in rows.tolist()]}
    if output_scores:
        data["scores"] = [[positive_scores[r].item()] + negative_scores[r][keep[r]].tolist() for r in rows.tolist()]
    else:
        data["labels"] = [[1] + [0] * int(keep[r].sum()) for r in rows.tolist()]
    return data, {"negative": negative_scores[keep], "difference": pos_rep[keep] - negative_scores[keep],
                  "maximum": keep.size(0), "rows": rows}


def labeled_pair(output_scores, anchor_col, positive_col, texts: Texts, indices, negative_scores,
                 positive_scores, num_negatives, dataset_len):
    """ST's labeled-pair rows: per query its positives (label 1 / score), then its kept negatives (0 / score)."""
    data = {anchor_col: [], positive_col: [], ("score" if output_scores else "label"): []}
    last = "score" if output_scores else "label"
    p = 0
    for q, query in enumerate(texts.queries):
        for row in texts.positive_indices[q]:
            data[anchor_col].append(query)
            data[positive_col].append(texts.corpus[row])
            data[last].append(positive_scores[p].item() if output_scores else 1)
            p += 1
        for row, score in zip(indices[q].tolist(), negative_scores[q].tolist()):
            if score == NEG_INF:
                continue
            data[anchor_col].append(query)
            data[positive_col].append(texts.corpus[row])
            data[last].append(score if output_scores else 0)
    negatives = negative_scores.repeat_interleave(torch.tensor(texts.n_positives), dim=0)
    keep = negatives != NEG_INF
    difference = positive_scores.unsqueeze(1).expand(-1, num_negatives)[keep] - negatives[keep]
    return data, {"negative": negatives[keep], "difference": difference,
                  "maximum": len(texts.queries) * num_negatives + dataset_len}


def print_summary(positive_scores, summary, log_counters, f: Filters, n_rows) -> None:
    """ST's printed statistics table and notes, line for line (through `console`)."""
    negative_scores, difference = summary["negative"], summary["difference"]
    row_format = "{:<6} {:>14} {:>14} {:>14}"

    def fmt(value):
        return f"{value.item():.4f}" if isinstance(value, torch.Tensor) else f"{value:,}"

    console(row_format.format("Metric", "Positive", "Negative", "Difference"))
    console(row_format.format("Count", fmt(len(positive_scores)), fmt(len(negative_scores)), ""))
    for metric, function in [
        ("mean", torch.mean), ("median", torch.median), ("std", torch.std),
        ("min", lambda s: torch.min(s) if s.numel() > 0 else float("inf")),
        ("25%", lambda s: torch.quantile(s.float(), q=0.25) if s.numel() > 0 else float("inf")),
        ("50%", lambda s: torch.quantile(s.float(), q=0.5) if s.numel() > 0 else float("inf")),
        ("75%", lambda s: torch.quantile(s.float(), q=0.75) if s.numel() > 0 else float("inf")),
        ("max", lambda s: torch.max(s) if s.numel() > 0 else float("-inf")),
    ]:
        console(row_format.format(metric.capitalize(), fmt(function(positive_scores)), fmt(function(negative_scores)),
                                  fmt(function(difference))))
    for name, value in [("absolute_margin", f.absolute_margin), ("relative_margin", f.relative_margin),
                        ("max_score", f.max_score), ("min_score", f.min_score)]:
        if name in log_counters:
            c = log_counters[name]
            console(f"Skipped {c['skipped']:,} potential negatives ({c['ratio']:.2%}) due to the {name} of {value}.")
    missing = summary["maximum"] - n_rows
    if missing > 0:
        solutions = ["range_max"] + (["range_min"] if f.range_min > 0 else [])
        solutions += [n for n, v in [("absolute_margin", f.absolute_margin), ("relative_margin", f.relative_margin),
                                     ("max_score", f.max_score)] if v is not None]
        considerations = ", ".join(solutions[:-1]) + " and " + solutions[-1] if len(solutions) > 1 else solutions[0]
        console(f"Could not find enough negatives for {missing} samples ({missing / summary['maximum']:.2%})."
              f" Consider adjusting the {considerations} parameter{'s' if len(solutions) > 1 else ''} if you'd "
              "like to find more valid negatives.")
