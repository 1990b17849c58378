"""Checks of a pipeline's inputs that need no model weights and no encoding, so that a bad argument
fails in seconds rather than after the corpus is encoded: the BEIR folder and its splits, the model's
config.json (its dimension and position limit), index specs against that dimension and the corpus
size, and output paths. Errors are UsageErrors whose `param` is the pipeline's argument (a run spec's
field), which the CLI turns into the flag; a missing input is also a FileNotFoundError, an output in
the way also a FileExistsError."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from drfast.common.checks import check_optional_int
from drfast.common.errors import UsageError, UsageFileExistsError, UsageFileNotFoundError
from drfast.data import beir_splits
from drfast.encode.encoders import read_st_config, resolve_model
from drfast.index.format import read_meta
from drfast.index.pq import KSUB
from drfast.index.spec import parse_index_spec

PathLike = str | os.PathLike
BEIR_LAYOUT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv"


class InputNotFoundError(UsageFileNotFoundError):
    """An input file or folder that is not there; `param` names the argument that gave it."""


class OutputInTheWayError(UsageFileExistsError):
    """An output path taken by something the user did not ask to replace; `param` names the argument."""


def _check_creatable(output: Path, name: str) -> None:
    """Every existing ancestor of `output` is a folder (else it could never be created, found only when
    the first file is written, after the model loaded)."""
    for parent in output.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputInTheWayError(name, f"{parent} is a file, not a folder, so {output} cannot be created")
            return


def _what_folder(folder: Path) -> Optional[str]:
    """What `folder` is when it holds someone's inputs (a BEIR folder, a drfast index, a corpus cache,
    a model), else None."""
    if not folder.is_dir():
        return None
    if any((folder / name).exists() for name in ("corpus.jsonl", "queries.jsonl", "qrels")):
        return "a BEIR data folder"
    if (folder / "meta.json").is_file():
        return "a drfast index" if (folder / "doc_ids.txt").is_file() and not list(folder.glob("embeddings.*.npy")) \
            else "a drfast corpus embeddings cache"
    if (folder / "config.json").is_file() or (folder / "modules.json").is_file():
        return "a model folder"
    return None


def check_output_place(output: PathLike, name: str = "output", inputs: Sequence[Optional[PathLike]] = (),
                       replaces: Optional[str] = None) -> Path:
    """`output` may be written: it is not a BEIR data folder, a drfast index, a corpus cache or a model
    folder (but for `replaces`, what the command itself writes: "a drfast index" for drfast index),
    nor one of the command's `inputs` (files or folders it reads), and every existing ancestor is a
    folder. The one rule of every command's output."""
    output = Path(output)
    _check_creatable(output, name)
    what = _what_folder(output)
    if what is not None and what != replaces:
        raise OutputInTheWayError(name, f"{output} is {what}; write the results to a folder of their own")
    resolved = output.resolve()
    for given in inputs:
        if given is not None and resolved == Path(given).resolve():
            raise OutputInTheWayError(name, f"{output} is an input of this command ({given}); write the results "
                                      "elsewhere")
    return output


def check_outputs_free(paths: Iterable[PathLike], overwrite: bool, name: str = "output") -> None:
    """None of `paths` (the files a command writes) exists unless `overwrite`: outputs never replace
    what the user did not ask to replace."""
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise OutputInTheWayError(name, f"{path} exists (an earlier run's?); pass overwrite (--overwrite) to "
                                      "replace it, or choose another output")


def check_output_dir(output: PathLike, name: str = "output") -> Path:
    """`output` as a Path; OutputInTheWayError when it exists and is not a folder, or cannot be created."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputInTheWayError(name, f"{output} exists and is not a folder")
    _check_creatable(output, name)
    return output


def check_output_file(output: PathLike, name: str = "output") -> Path:
    """`output` as a Path; OutputInTheWayError when it is a folder, or cannot be created."""
    output = Path(output)
    if output.is_dir():
        raise OutputInTheWayError(name, f"{output} is a folder; expected a file name")
    _check_creatable(output, name)
    return output


def check_beir(data_dir: PathLike, corpus: bool = True, **splits: str) -> Path:
    """The BEIR folder `data_dir` (the argument `data`), with qrels/SPLIT.tsv for each keyword (the
    argument naming the split); corpus.jsonl may be absent when not `corpus` (working against a saved
    index)."""
    if data_dir is None:
        raise UsageError("data", "required: a BEIR folder")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise InputNotFoundError("data", f"{folder} is not a folder ({BEIR_LAYOUT})")
    for name in ("corpus.jsonl", "queries.jsonl") if corpus else ("queries.jsonl",):
        if not (folder / name).is_file():
            raise InputNotFoundError("data", f"{folder} has no {name} ({BEIR_LAYOUT})")
    for arg, split in splits.items():
        qrels = folder / "qrels" / f"{split}.tsv"
        if qrels.exists() and not qrels.is_file():
            raise InputNotFoundError(arg, f"{qrels} is not a file (the qrels of split {split!r})")
        if not qrels.is_file():
            raise InputNotFoundError(arg, f"no split {split!r} in {folder} (no qrels/{split}.tsv); available "
                                     f"splits: {', '.join(beir_splits(folder)) or 'none'}")
    return folder


def check_has_positives(data, split: str, data_dir: PathLike, name: str = "split") -> None:
    """A loaded split (drfast.data.Dataset) has a query with a positive grade (relevance > 0): without
    one every metric is 0 and there is nothing to train on, so the split is refused, naming its file."""
    if not data.positives:
        judged = sum(len(grades) for grades in data.qrels.values())
        raise UsageError(name, f"{Path(data_dir) / 'qrels' / f'{split}.tsv'} has no positive grade (relevance > 0) "
                         f"among its {judged} judgments: every metric would be 0; choose a split with relevant "
                         "documents")


def model_config(model: PathLike, name: str = "model"):
    """The transformers config of a model folder or hub name: its config.json only, no weights."""
    from transformers import AutoConfig

    source = resolve_model(model)
    if not os.path.isdir(source) and (os.path.isabs(source) or source.startswith((".", "~"))
                                      or os.path.exists(source)):
        raise InputNotFoundError(name, f"{source} is not a model folder")
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


def check_index_spec(spec: str, dim: int, n_docs: Optional[int] = None, name: str = "index") -> None:
    """`spec` (flat, pq:M, opq:M) for `dim`-dimensional embeddings of `n_docs` documents (when known):
    M must divide the dimension, and PQ codebooks need a document per centroid."""
    try:
        kind, m = parse_index_spec(spec)
    except UsageError as e:
        raise UsageError(name, e.detail) from None
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
    if not Path(index_dir).is_dir() or not (Path(index_dir) / "meta.json").is_file():
        raise InputNotFoundError("index_dir", f"{index_dir} is not a drfast index (no meta.json)")
    if _what_folder(Path(index_dir)) == "a drfast corpus embeddings cache":
        raise UsageError("index_dir", f"{index_dir} is a corpus embeddings cache (drfast encode), not an index; "
                         f"build one from it with drfast index --embeddings {Path(index_dir) / 'embeddings.*.npy'} "
                         f"--doc-ids {Path(index_dir) / 'doc_ids.txt'}")
    try:
        meta = read_meta(index_dir)
    except ValueError as e:
        raise UsageError("index_dir", str(e)) from None
    if meta["dim"] != dim:
        raise UsageError("index_dir", f"{index_dir} holds {meta['dim']}-dimensional rows; the query encoder's "
                         f"dimension is {dim}")
    return meta
