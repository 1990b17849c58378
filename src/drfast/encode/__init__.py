"""Encoders (any Hugging Face / sentence-transformers model) and the cached, resumable corpus encoding."""
from drfast.encode.corpus_cache import DEFAULT_CACHE, corpus_cache_key, encode_corpus
from drfast.encode.encoders import BiEncoder, Encoder, resolve_model, save_encoder

__all__ = ["Encoder", "BiEncoder", "save_encoder", "resolve_model", "encode_corpus", "corpus_cache_key",
           "DEFAULT_CACHE"]
