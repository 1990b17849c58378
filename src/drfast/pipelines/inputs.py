"""Checks of a pipeline's inputs that need no model weights and no encoding, so that a bad argument
fails in seconds rather than after the corpus is encoded: the BEIR folder and its splits, the model's
config.json (its dimension and position limit), index specs against that dimension and the corpus
size, and output paths. Errors start with the pipeline's argument name, which the CLI turns into
the flag."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from drfast.common.checks import check_optional_int
from drfast.common.errors import UsageError
from drfast.data import beir_splits
from drfast.encode.encoders import read_st_config, resolve_model
from drfast.index.format import read_meta
from drfast.index.pq import KSUB
from drfast.index.spec import parse_index_spec

PathLike = str | os.PathLike
BEIR_LAYOUT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv"


def check_output_dir(output: PathLike, name: str = "output") -> Path:
    """`output` as a Path; FileExistsError when it exists and is not a folder."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{name}: {output} exists and is not a folder")
    return output


def check_output_file(output: PathLike, name: str = "output") -> Path:
    """`output` as a Path; FileExistsError when it is a folder."""
    output = Path(output)
    if output.is_dir():
        raise FileExistsError(f"{name}: {output} is a folder; expected a file name")
    return output


def check_beir(data_dir: PathLike, corpus: bool = True, **splits: str) -> Path:
    """The BEIR folder `data_dir`, with qrels/SPLIT.tsv for each keyword (the argument naming the split);
    corpus.jsonl may be absent when not `corpus` (working against a saved index)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir: {folder} is not a folder ({BEIR_LAYOUT})")
    for name in ("corpus.jsonl", "queries.jsonl") if corpus else ("queries.jsonl",):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"data_dir: {folder} has no {name} ({BEIR_LAYOUT})")
    for arg, split in splits.items():
        if not (folder / "qrels" / f"{split}.tsv").is_file():
            raise FileNotFoundError(f"{arg}: no split {split!r} in {folder} (no qrels/{split}.tsv); available "
                                    f"splits: {', '.join(beir_splits(folder)) or 'none'}")
    return folder


def model_config(model: PathLike, name: str = "model"):
    """The transformers config of a model folder or hub name: its config.json only, no weights."""
    from transformers import AutoConfig

    source = resolve_model(model)
    if not os.path.isdir(source) and (os.path.isabs(source) or source.startswith((".", "~"))
                                      or os.path.exists(source)):
        raise FileNotFoundError(f"{name}: {source} is not a model folder")
    try:
        st = read_st_config(source) if os.path.isdir(source) else None
        sub = {"subfolder": st.transformer_subfolder} if st and st.transformer_subfolder else {}
        return AutoConfig.from_pretrained(source, **sub)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(name, f"cannot read the model config of {source} ({e})") from None


def check_model(model: PathLike, query_model: Optional[PathLike] = None, *, pooling: Optional[str] = None,
                normalize: Optional[bool] = None, query_max_length: Optional[int] = None,
                doc_max_length: Optional[int] = None) -> int:
    """The embedding dimension of `model` (documents) and `query_model` (queries, default `model`),
    which must agree; explicit max lengths must fit each tower's position embeddings. The keywords
    are BiEncoder.load's."""
    doc = model_config(model)
    query = doc if query_model is None else model_config(query_model, "query_model")
    if doc.hidden_size != query.hidden_size:
        raise UsageError("query_model", f"dimension {query.hidden_size} differs from the model's {doc.hidden_size}")
    for name, value, config in (("query_max_length", query_max_length, query),
                                ("doc_max_length", doc_max_length, doc)):
        limit = getattr(config, "max_position_embeddings", None) or 512
        if check_optional_int(value, name, 1) is not None and value > limit:
            raise UsageError(name, f"{value} exceeds the model's max_position_embeddings ({limit})")
    return int(doc.hidden_size)


def check_index_spec(spec: str, dim: int, n_docs: Optional[int] = None, name: str = "index_spec") -> None:
    """`spec` (flat, pq:M, opq:M) for `dim`-dimensional embeddings of `n_docs` documents (when known):
    M must divide the dimension, and PQ codebooks need a document per centroid."""
    try:
        kind, m = parse_index_spec(spec)
    except ValueError as e:
        raise UsageError(name, f"{str(e).partition(': ')[2]}") from None
    if kind == "flat":
        return
    if dim % m:
        raise UsageError(name, f"{spec!r}: M={m} must divide the model's dimension {dim}")
    if n_docs is not None and n_docs < KSUB:
        raise UsageError(name, f"{spec!r}: PQ training needs at least {KSUB} documents (one per centroid), the "
                         f"corpus has {n_docs}")


def check_index_dir(index_dir: PathLike, dim: int, *, index_spec: str = "flat", first_pass: Optional[str] = None,
                    also_evaluate_on: Sequence[str] = ()) -> dict:
    """meta.json of a saved drfast index folder searched instead of an encoded corpus (no arrays are
    read): its dimension must be the query encoder's `dim`, and the arguments that build an index
    must keep their defaults (a saved index is searched as it was saved)."""
    for arg, value, default in (("index_spec", index_spec, "flat"), ("first_pass", first_pass, None),
                                ("also_evaluate_on", tuple(also_evaluate_on), ())):
        if value != default:
            raise UsageError("index_dir", f"a saved index is searched as it was saved; {arg}={value!r} cannot be "
                             "combined with it")
    try:
        meta = read_meta(index_dir)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"index_dir: {str(e).partition('path: ')[2] or e}") from None
    if meta["dim"] != dim:
        raise UsageError("index_dir", f"{index_dir} holds {meta['dim']}-dimensional rows; the query encoder's "
                         f"dimension is {dim}")
    return meta
