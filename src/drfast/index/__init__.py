"""Document indexes: exact flat rows, PQ codes with faiss-trained codebooks, the shared on-disk
format, `load_index`, faiss interop (`load_faiss_index`, `to_faiss`) and index specs ("flat",
"pq:M", "opq:M")."""
from drfast.index.flat import FlatIndex
from drfast.index.load import load_faiss_index, load_index
from drfast.index.pq import PQIndex
from drfast.index.spec import build_index, parse_index_spec

__all__ = ["FlatIndex", "PQIndex", "load_index", "load_faiss_index", "build_index", "parse_index_spec"]
