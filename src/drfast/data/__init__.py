"""Reading retrieval data: BEIR folders, MS MARCO TSV, TREC qrels, Tevatron training jsonl."""
from drfast.data.formats import (Corpus, DataFormatError, Dataset, TrainingExample, beir_splits, doc_text,
                                 iter_training_examples, load_beir, load_msmarco, load_qrels, load_queries,
                                 positives_from_qrels, write_training_examples)

__all__ = ["Corpus", "DataFormatError", "Dataset", "TrainingExample", "beir_splits", "doc_text",
           "iter_training_examples", "load_beir", "load_msmarco", "load_qrels", "load_queries",
           "positives_from_qrels", "write_training_examples"]
