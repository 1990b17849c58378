"""Document indexes: exact flat rows, PQ codes with faiss-trained codebooks, the shared on-disk
format, `load_index`, and index specs ("flat", "pq:M", "opq:M")."""
from drfast.index.flat import FlatIndex
from drfast.index.load import load_index
from drfast.index.pq import PQIndex
from drfast.index.spec import build_index, parse_index_spec

__all__ = ["FlatIndex", "PQIndex", "load_index", "build_index", "parse_index_spec"]
