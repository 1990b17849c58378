"""Static negatives: mining from an index or BM25, and TriSampler."""
from drfast.negatives.mining import MinedNegatives, MiningConfig, mine_from_bm25, mine_from_index
from drfast.negatives.trisampler import TriSamplerConfig, trisample

__all__ = ["MiningConfig", "MinedNegatives", "mine_from_index", "mine_from_bm25", "TriSamplerConfig", "trisample"]
