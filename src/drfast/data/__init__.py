"""Reading retrieval data: BEIR folders, MS MARCO TSV, TREC qrels, Tevatron training jsonl.

Everything here turns files into plain Python / numpy values; nothing above this package parses a file.
"""
from drfast.data.loaders import (Dataset, beir_split_path, beir_splits, load_beir, load_msmarco, load_qrels,
                                 load_queries, positives_from_qrels)
from drfast.data.corpus import Corpus
from drfast.data.parsing import DataFormatError, doc_text
from drfast.data.training_examples import TrainingExample, iter_training_examples, write_training_examples

__all__ = ["Corpus", "DataFormatError", "Dataset", "TrainingExample", "beir_split_path", "beir_splits", "doc_text",
           "iter_training_examples", "load_beir", "load_msmarco", "load_qrels", "load_queries",
           "positives_from_qrels", "write_training_examples"]
