"""Evaluation: runs, trec_eval-exact metrics, pairwise-error statistics, the static-vs-dynamic
negative overlap, and plots."""
from drfast.eval.overlap import NegativeOverlapHook
from drfast.eval.error_stats import error_statistics, pairwise_errors
from drfast.eval.plots import plot_errors, plot_run
from drfast.eval.retrieve import retrieve
from drfast.eval.trec import evaluate, paired_ttest, read_trec_run, write_trec_run

__all__ = ["retrieve", "evaluate", "paired_ttest", "read_trec_run", "write_trec_run", "pairwise_errors",
           "error_statistics", "NegativeOverlapHook", "plot_run", "plot_errors"]
