"""Document indexes: `Index` (the protocol every index satisfies), exact flat rows, PQ codes with
faiss-trained codebooks, the shared on-disk format, `load_index`, faiss interop (`load_faiss_index`,
`to_faiss`) and index specs ("flat", "pq:M", "opq:M") and ShardedIndex (the rows of every
torch.distributed rank searched as one index)."""
from drfast.index.flat import FlatIndex
from drfast.index.load import load_faiss_index, load_index
from drfast.index.pq import PQIndex
from drfast.index.protocol import Index
from drfast.index.sharded import ShardedIndex
from drfast.index.spec import build_index, parse_index_spec

__all__ = ["Index", "FlatIndex", "PQIndex", "ShardedIndex", "load_index", "load_faiss_index", "build_index", "parse_index_spec"]
