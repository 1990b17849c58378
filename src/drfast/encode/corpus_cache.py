"""Encode a corpus once into a cached, resumable float16/float32 memmap.

Layout under `cache_dir`:
    <key>/embeddings.<dtype>.npy   [N, d] in corpus order (np.lib.format, opened as a memmap)
    <key>/doc_ids.txt              one external id per line, row i <-> line i
    <key>/meta.json                what produced it (model, pooling, max_length, timings)
    <key>.partial/chunk_*.npy      finished chunks of an interrupted run (removed when done)
The key hashes everything that changes the vectors, so a changed model, corpus or setting never
reuses stale embeddings, and an unchanged one returns at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from drfast.common.atomic import atomic_dir, save_npy_atomic
from drfast.common.checks import check_choice, check_int
from drfast.common.distributed import DistContext
from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageError, UsageTypeError
from drfast.encode.encoders import Encoder

logger = logging.getLogger(__name__)

__all__ = ["encode_corpus", "corpus_cache_key", "weights_digest", "DTYPES", "DEFAULT_CACHE"]

# Where corpus embeddings (and other caches) live unless a --cache folder is given.
DEFAULT_CACHE = Path(os.environ.get("DRFAST_CACHE", Path.home() / ".cache" / "drfast"))

DTYPES = ("float16", "float32")
_FORMAT_VERSION = 2  # bump when the cache layout or the key's contents change


def corpus_cache_key(encoder: Encoder, corpus, dtype: str = "float16") -> str:
    """16 hex digits of a sha256 over the model identity (weights, tokenizer, pooling,
    normalisation, max_length), the corpus fingerprint and the storage dtype.

    The weights are hashed by content (about 0.1 s for MiniLM), not by file sizes/mtimes: an
    encoder trained in memory keeps its source path, and must not hit its untrained cache.
    """
    _check_encoder(encoder)
    check_choice(dtype, "dtype", DTYPES)
    return _cache_key(encoder, _fingerprint(corpus), dtype)


def _cache_key(encoder: Encoder, fingerprint: str, dtype: str) -> str:
    # Content, not paths: a trained tower saved and loaded again finds the embeddings it already made.
    identity = {
        "format": _FORMAT_VERSION,
        "weights": weights_digest(encoder.model),
        "tokenizer": _tokenizer_digest(encoder.tokenizer),
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "max_length": encoder.max_length,
        "do_lower_case": encoder.do_lower_case,
        "corpus": fingerprint,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def encode_corpus(encoder: Encoder, corpus, cache_dir, dtype: str = "float16", batch_size: int = 32,
                  chunk_size: int = 2048, show_progress: bool = True,
                  dist: Optional[DistContext] = None) -> Tuple[np.memmap, DocIdMap]:
    """Encode `corpus` with `encoder` once, into a cached memory-mapped matrix.

    Documents go longest first (an out-of-memory error shows up at once), in chunks of `chunk_size`;
    each finished chunk is saved atomically on its own, so an interrupted run resumes where it stopped.
    The cache key covers the model's weights, tokenizer, pooling, normalisation, max length, dtype and
    the corpus, so a second call with the same inputs reads the cache.

    Parameters
    ----------
    encoder : Encoder
        The document tower.
    corpus : Corpus
        Anything with ``__len__``, ``doc_ids``, ``texts(indices)``, ``lengths`` and ``fingerprint()``.
    cache_dir : str or os.PathLike
        The cache folder (one folder every rank sees, under torch.distributed).
    dtype : {"float16", "float32"}
        Storage of the embeddings.
    batch_size : int
        Documents per encoder batch.
    chunk_size : int
        Documents per resumable chunk.
    show_progress : bool
        Show a progress bar.
    dist : DistContext, optional
        With several ranks the call is collective (every rank calls it with the same arguments): the
        missing chunks are shared out, chunk i to rank i mod W (the longest documents come first, so
        contiguous blocks would load rank 0 most), each rank saves its chunks, and after every rank is
        done rank 0 assembles them into the cache, the same files a single process writes
        (bit-identical embeddings when the encoder is deterministic on the ranks' devices). A resumed
        run may have another world size: a chunk file is the same whoever wrote it.

    Returns
    -------
    embeddings : numpy.memmap, [N, d]
        Read-only, in corpus order.
    doc_ids : DocIdMap
        The corpus's ids, one per row.
    """
    _check_encoder(encoder)
    check_choice(dtype, "dtype", DTYPES)
    check_int(batch_size, "batch_size", 1)
    check_int(chunk_size, "chunk_size", 1)
    n, doc_ids, lengths = _check_corpus(corpus)
    cache_dir = os.fspath(cache_dir)
    fingerprint = _fingerprint(corpus)
    key = _cache_key(encoder, fingerprint, dtype)
    final = os.path.join(cache_dir, key)
    if dist is not None and dist.distributed:
        _encode_collective(dist, final, encoder, corpus, key, fingerprint, dtype, n, doc_ids, lengths, batch_size,
                           chunk_size, show_progress)
        return _load(final, dtype, n)
    if os.path.isfile(os.path.join(final, "meta.json")):
        return _load(final, dtype, n)
    os.makedirs(cache_dir, exist_ok=True)
    # One encoder per key at a time: a second process waits here, then finds the finished cache.
    with _locked(os.path.join(cache_dir, key + ".lock"), show_progress):
        if not os.path.isfile(os.path.join(final, "meta.json")):
            _encode_into(final, encoder, corpus, key, fingerprint, dtype, n, doc_ids, lengths, batch_size,
                         chunk_size, show_progress)
        # Safe to remove while held: a process that still waits on it finds the finished cache.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(cache_dir, key + ".lock"))
    return _load(final, dtype, n)


def _chunk_plan(final, n, lengths, chunk_size):
    """(order, chunks, paths, todo): the corpus rows longest first, the [s, e) chunks of that order,
    their files under FINAL.partial, and the indices of the chunks not saved yet."""
    order = np.argsort(-lengths.astype(np.int64), kind="stable")  # longest first: an OOM shows up at once
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    paths = [os.path.join(final + ".partial", f"chunk_{s:010d}_{e:010d}.npy") for s, e in chunks]
    todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    return order, chunks, paths, todo


def _encode_chunks(encoder, corpus, dtype, batch_size, order, chunks, paths, mine, bar) -> None:
    """Encode and save the chunks `mine` (each file written atomically: it exists only once complete)."""
    for i in mine:
        s, e = chunks[i]
        texts = corpus.texts(order[s:e].tolist())
        if len(texts) != e - s:
            raise UsageError("corpus", f"texts() returned {len(texts)} texts for {e - s} indices")
        emb = encoder.encode(texts, batch_size=batch_size, on_batch=bar.update).astype(dtype)
        if not np.isfinite(emb).all():
            raise UsageError("dtype", f"embeddings overflow {dtype} (values beyond its range); use float32")
        save_npy_atomic(paths[i], emb)


def _meta(encoder, key, fingerprint, dtype, n, chunk_size, already, seconds) -> dict:
    return {"key": key, "count": n, "dim": encoder.dim, "dtype": dtype, "source": encoder.source,
            "pooling": encoder.pooling, "normalize": encoder.normalize, "max_length": encoder.max_length,
            "corpus_fingerprint": fingerprint, "chunk_size": chunk_size,
            "resumed_docs": already, "encode_seconds": round(seconds, 3)}


def _encode_into(final, encoder, corpus, key, fingerprint, dtype, n, doc_ids, lengths, batch_size, chunk_size,
                 show_progress) -> None:
    work = final + ".partial"
    os.makedirs(work, exist_ok=True)
    order, chunks, paths, todo = _chunk_plan(final, n, lengths, chunk_size)
    already = n - sum(chunks[i][1] - chunks[i][0] for i in todo)

    started = time.perf_counter()
    with tqdm(total=n, initial=already, disable=not show_progress, desc="encoding corpus", unit="doc") as bar:
        _encode_chunks(encoder, corpus, dtype, batch_size, order, chunks, paths, todo, bar)
    seconds = time.perf_counter() - started
    _assemble(final, paths, chunks, order, doc_ids,
              _meta(encoder, key, fingerprint, dtype, n, chunk_size, already, seconds))
    shutil.rmtree(work, ignore_errors=True)


def _encode_collective(dist, final, encoder, corpus, key, fingerprint, dtype, n, doc_ids, lengths, batch_size,
                       chunk_size, show_progress) -> None:
    """encode_corpus on several ranks (see there). Rank 0 holds the key's lock throughout (other
    processes wait for it as for a single one) and decides what is left to do; every step that can
    fail on one rank is checked on all (DistContext.check_all), so none waits forever."""
    cache_dir = os.path.dirname(final)
    lock = os.path.join(cache_dir, os.path.basename(final) + ".lock")
    show = show_progress and dist.is_main
    with contextlib.ExitStack() as stack:
        error, todo = None, None
        try:
            if dist.is_main:
                os.makedirs(final + ".partial", exist_ok=True)
                stack.enter_context(_locked(lock, show))
                if not os.path.isfile(os.path.join(final, "meta.json")):
                    todo = _chunk_plan(final, n, lengths, chunk_size)[3]
        except Exception as e:  # noqa: BLE001 (raised on every rank by check_all)
            error = e
        dist.check_all(error, "preparing the corpus cache")
        todo = dist.broadcast(todo)  # None: the cache is complete
        if todo is not None:
            order, chunks, paths, _ = _chunk_plan(final, n, lengths, chunk_size)
            mine = todo[dist.rank::dist.world_size]
            already = n - sum(chunks[i][1] - chunks[i][0] for i in todo)
            started = time.perf_counter()
            error = None
            try:
                with tqdm(total=sum(chunks[i][1] - chunks[i][0] for i in mine), disable=not show, unit="doc",
                          desc=f"encoding corpus (rank 0 of {dist.world_size})") as bar:
                    _encode_chunks(encoder, corpus, dtype, batch_size, order, chunks, paths, mine, bar)
            except Exception as e:  # noqa: BLE001
                error = e
            dist.check_all(error, "encoding the corpus")
            seconds = time.perf_counter() - started
            error = None
            try:
                if dist.is_main:
                    meta = _meta(encoder, key, fingerprint, dtype, n, chunk_size, already, seconds)
                    meta["ranks"] = dist.world_size
                    _assemble(final, paths, chunks, order, doc_ids, meta)
                    shutil.rmtree(final + ".partial", ignore_errors=True)
            except Exception as e:  # noqa: BLE001
                error = e
            dist.check_all(error, "assembling the corpus cache")
        if dist.is_main:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)


@contextlib.contextmanager
def _locked(path: str, show_progress: bool):
    """An exclusive advisory lock on `path` (released when the process exits, even killed)."""
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if show_progress:
                logger.info("waiting for another process encoding into %s ...", path[:-len(".lock")])
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _assemble(final, paths, chunks, order, doc_ids, meta) -> None:
    """Scatter the sorted chunks back into corpus order, in a temp folder renamed into place."""
    with atomic_dir(final) as tmp:
        emb = np.lib.format.open_memmap(tmp / f"embeddings.{meta['dtype']}.npy", mode="w+",
                                        dtype=meta["dtype"], shape=(meta["count"], meta["dim"]))
        for path, (s, e) in zip(paths, chunks):
            chunk = np.load(path)
            if chunk.shape != (e - s, meta["dim"]):
                raise UsageError("cache_dir", f"{path} has shape {chunk.shape}, expected {(e - s, meta['dim'])}; "
                                 f"delete {os.path.dirname(path)} and re-run")
            emb[order[s:e]] = chunk
        emb.flush()
        del emb
        doc_ids.write(tmp / "doc_ids.txt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _load(folder: str, dtype: str, n: int) -> Tuple[np.memmap, DocIdMap]:
    emb = np.load(os.path.join(folder, f"embeddings.{dtype}.npy"), mmap_mode="r")
    doc_ids = DocIdMap.read(os.path.join(folder, "doc_ids.txt"))
    if emb.shape[0] != n or len(doc_ids) != n:
        raise UsageError("cache_dir", f"{folder} holds {emb.shape[0]} rows and {len(doc_ids)} ids for a corpus of "
                         f"{n} documents; delete it and re-run")
    return emb, doc_ids


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a module's state dict: every tensor's name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, no copy for CPU tensors
    return h.hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        config = json.loads(backend.to_str())
        # Truncation/padding state changes with every call; it is not part of the tokenizer's identity.
        config.pop("truncation", None)
        config.pop("padding", None)
        text = json.dumps(config, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _fingerprint(corpus) -> str:
    fingerprint = corpus.fingerprint()
    if not isinstance(fingerprint, str):
        raise UsageTypeError("corpus", f"fingerprint() must return a str, got {type(fingerprint).__name__}")
    return fingerprint


def _check_encoder(encoder) -> None:
    if not isinstance(encoder, Encoder):
        raise UsageTypeError("encoder", f"expected a drfast Encoder, got {type(encoder).__name__}")


def _check_corpus(corpus):
    for attr in ("doc_ids", "texts", "lengths", "fingerprint"):
        if not hasattr(corpus, attr):
            raise UsageTypeError("corpus", f"expected an object with __len__, doc_ids, texts(), lengths and "
                            f"fingerprint(); {type(corpus).__name__} has no {attr!r}")
    n = len(corpus)
    if n == 0:
        raise UsageError("corpus", "is empty")
    doc_ids = DocIdMap(corpus.doc_ids, name="corpus doc_ids")  # unique, no line breaks
    lengths = np.asarray(corpus.lengths)
    if len(doc_ids) != n or lengths.shape != (n,):
        raise UsageError("corpus", f"len() is {n} but doc_ids has {len(doc_ids)} and lengths shape {lengths.shape}")
    return n, doc_ids, lengths
