"""Where every part of an ADORE / JPQ training run lives, and whether it fits (`drfast plan`).

`plan_memory(PlannedRun(docs=..., dim=..., ...))` returns a `MemoryPlan`: the parts (name, bytes, where), the
total of each place, the placement chosen and `fits`. The places:

  gpu                 the CUDA device's memory
  pinned host         page-locked host memory (staging buffers of non-blocking host <-> GPU copies)
  host                ordinary host RAM
  memory-mapped file  pages of a file (the cached corpus embeddings): the OS reads them in on demand and
                      drops them under pressure, so they are *not* counted against host RAM

Placement (tried in this order; the first that fits is chosen, else the last is reported as not fitting):
  1. "gpu"   (a GPU is given or detected) the query encoder, its gradients, AdamW state and activations
             on the GPU, and the whole index there too (flat: exact rows, plus the first-pass copy; PQ:
             codes and centroids); the search runs on the GPU.
  2. "gpu-first-pass" (a GPU, a flat index with a first pass, not train_centroids) the encoder and the
             first-pass copy on the GPU, the exact rows memory-mapped on the host: first pass, bounds and
             the candidates' selection run on the GPU in chunks of GPU_PLACED_CHUNK rows (the placed
             two-stage search, FlatIndex(first_pass_device=...)); the few undecided pairs are scored
             on the host by the native exact scan's pair scorer and the candidate rows are gathered on
             the host and copied through pinned buffers, as in "mixed".
  3. "mixed" (a GPU, the index too big for it; not with train_centroids, whose centroids must live with
             the encoder) the encoder on the GPU, the index in host memory searched by the native CPU
             kernel: only the queries, the candidate ids / pair weights and the gathered candidate rows
             cross the bus (pinned buffers, non-blocking copies). A flat index with a first pass keeps
             the first-pass copy in RAM and its exact rows memory-mapped (the exact two-stage search reads
             only the few rows it rescores); without a first pass the exact scan reads every row at every
             step, so the rows count as RAM.
  4. "host"  (no GPU) everything in host memory, searched on the CPU (exact rows as in 3.).

first_pass="auto" is resolved per placement (search.first_pass.resolve_auto_spec's rule, with the plan's
capacities): with the first pass on the GPU ("gpu-first-pass") int8, with its refinement codes when
they fit on the GPU, else "int8-lean"; on the CPU the kind this CPU runs fast (resolve_auto), an int8
copy with its refinement codes only when the host RAM the run holds plus the memory-mapped rows (their
page cache) fit in usable RAM, else "int8-lean"; all on the GPU, as on the CPU (FlatIndex's "auto"
is sized on the host before the index moves). Whenever memory-mapped rows do not fit in the page cache
beside the run, the plan adds a note: the rescoring then reads rows from disk at every step.

Sizes are computed from the same layouts the code allocates (tests compare them with a built
`FirstPassData` and `PQIndex`); the activation memory is an estimate (see `activation_bytes`). `fits`
requires every place's total to stay within its capacity less SAFETY_MARGIN (5%); the GPU's total
includes the CUDA context (CUDA_CONTEXT_BYTES) and the host's the process itself (PROCESS_BYTES).
Not counted: transient peaks while the index is built (a first-pass copy is built in host RAM
before it moves to the GPU; PQ training reads the embeddings), evaluation batches, the OS page cache
(but see the note on memory-mapped rows above).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from drfast.common.checks import check_bool, check_choice, check_float, check_int
from drfast.common.dataclass_args import option
from drfast.common.errors import UsageError, UsageTypeError
from drfast.common.memory import detect_gpu_memory, detect_host_memory
from drfast.common.sizes import format_bytes, parse_count, parse_size
from drfast.index.flat import FlatIndex, place_first_pass
from drfast.index.spec import parse_index_spec
from drfast.search.first_pass import first_pass_bytes, first_pass_refines, padded_dim, parse_first_pass, resolve_auto
from drfast.search.native import CANDIDATE_BYTES, FIRST_PASS_BLOCK_ROWS, FLAT_BLOCK_ROWS, PQ_BLOCK_ROWS
from drfast.search.runtime import get_num_threads
from drfast.search.torch_path import DEFAULT_CHUNK
from drfast.search.two_stage import GPU_PLACED_CHUNK
from drfast.search.two_stage_torch import PAIR_BATCH

logger = logging.getLogger(__name__)

PLACES = ("gpu", "pinned host", "host", "memory-mapped file")
SAFETY_MARGIN = 0.05                 # of each capacity: allocator fragmentation, estimates' error
CUDA_CONTEXT_BYTES = 500 * 10**6     # CUDA context + cuBLAS workspaces, outside torch's allocator
PROCESS_BYTES = 450 * 10**6          # Python + torch + transformers + drfast imported: 422 MB RSS measured
DEFAULT_DOC_ID_BYTES = 8             # per id when the longest id is not known
# Korthikanti et al. 2022 ("Reducing activation recomputation in large transformer models", eq. 1, with
# the MLP's 4h generalised to the intermediate size I): one layer saves s b (18 h + 4 I) + 5 a s^2 b
# bytes of 16-bit activations for backward (1-byte dropout masks included); fp32 doubles it.
# Calibrated on the CPU: all-MiniLM-L6-v2 in fp32, train mode, peak RSS growth over one forward +
# backward (python -m benchmarks.scripts.calibrate_activations) was 1.31x-1.59x the formula at s=32,
# B=32/64/128, over two runs (264-292 MB at B=32); the formula leaves out the embeddings' output,
# softmax/GELU temporaries and the activation gradients alive during backward.
ACTIVATION_CALIBRATION = 1.5
AMP = (None, "none", "bf16", "fp16")
DTYPES = {"float16": 2, "float32": 4}
# What the 8.8M x 768 rehearsal measured when memory-mapped rows fell out of the page cache (24 GB machine,
# ADORE step's search on the CPU): quoted by the plan's note on rows that will not stay cached.
PAGE_CACHE_COST = ("the 8.8M x 768 rehearsal on a 24 GB machine measured the int8 search with refinement codes "
                   "at 8.9 s per step against 1.93 s for int8-lean and 3.0 s for the exact fp16 scan, because "
                   "the rows fell out of the page cache")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of an encoder (a BERT / RoBERTa-like transformer)."""

    params: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    source: str  # where the numbers came from


def count_params(config: Dict[str, Any]) -> int:
    """Parameters of a BERT-like encoder (with its pooler) from its config.json values: embeddings
    (V + P + T) h + 2h, per layer 4h^2 + 2hI + 9h + I, pooler h^2 + h. Exact for BERT / RoBERTa /
    MiniLM (22,713,216 for all-MiniLM-L6-v2)."""
    h, L, I = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    emb = (config["vocab_size"] + config.get("max_position_embeddings", 512) + config.get("type_vocab_size", 2)) * h
    return emb + 2 * h + L * (4 * h * h + 2 * h * I + 9 * h + I) + h * h + h


def _shape(config: Dict[str, Any], source: str) -> ModelShape:
    return ModelShape(count_params(config), config["hidden_size"], config["num_hidden_layers"],
                      config.get("num_attention_heads", max(1, config["hidden_size"] // 64)),
                      config["intermediate_size"], source)


def _bert(v, p, t, h, L, a, I) -> dict:
    return dict(vocab_size=v, max_position_embeddings=p, type_vocab_size=t, hidden_size=h, num_hidden_layers=L,
                num_attention_heads=a, intermediate_size=I)


KNOWN_CONFIGS = {  # hub names whose config.json may not be cached here
    "roberta-base": _bert(50265, 514, 1, 768, 12, 12, 3072),         # 124.6M
    "roberta-large": _bert(50265, 514, 1, 1024, 24, 16, 4096),       # 355.4M
    "bert-base-uncased": _bert(30522, 512, 2, 768, 12, 12, 3072),    # 109.5M
    "bert-large-uncased": _bert(30522, 512, 2, 1024, 24, 16, 4096),  # 335.1M
    "all-minilm-l6-v2": _bert(30522, 512, 2, 384, 6, 12, 1536),      # 22.7M
}
ALIASES = {"facebookai/roberta-base": "roberta-base", "facebookai/roberta-large": "roberta-large",
           "google-bert/bert-base-uncased": "bert-base-uncased", "google-bert/bert-large-uncased": "bert-large-uncased",
           "sentence-transformers/all-minilm-l6-v2": "all-minilm-l6-v2"}


def model_shape(model: Optional[str] = None, model_params: Any = None) -> ModelShape:
    """The encoder's shape from `model` (a local folder's config.json, a config cached by transformers,
    or KNOWN_CONFIGS) or from `model_params` ("125M", 110e6): then the layers of the known model nearest
    in size are assumed (for the activation estimate)."""
    if (model is None) == (model_params is None):
        raise UsageError("model", "give the model or its parameter count (model_params), one of the two")
    if model_params is not None:
        params = parse_count(model_params, "model_params")
        if params < 1:
            raise UsageError("model_params", f"must be >= 1, got {model_params!r}")
        name, config = min(KNOWN_CONFIGS.items(), key=lambda kv: abs(count_params(kv[1]) - params))
        return ModelShape(params, config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                          config["intermediate_size"], f"{params:,} parameters given; layers as {name}")
    if not isinstance(model, str) or not model.strip():
        raise UsageTypeError("model", f"expected a local folder or a hub name, got {model!r}")
    from drfast.encode.encoders import read_st_config, resolve_model

    path = resolve_model(model)
    if os.path.isdir(path):
        st = read_st_config(path)
        sub = st.transformer_subfolder if st and st.transformer_subfolder else ""
        config_file = os.path.join(path, sub, "config.json")
        try:
            with open(config_file, encoding="utf-8") as f:
                return _shape(json.load(f), config_file)
        except (OSError, KeyError, ValueError) as e:
            raise UsageError("model", f"{config_file} does not give hidden_size, num_hidden_layers, intermediate_size "
                             f"and vocab_size ({e}); pass model_params instead") from e
    key = model.strip().lower()
    key = ALIASES.get(key, key)
    if key in KNOWN_CONFIGS:
        return _shape(KNOWN_CONFIGS[key], f"known configuration of {key}")
    try:  # a hub name whose config transformers has cached (no network)
        from transformers import AutoConfig

        return _shape(AutoConfig.from_pretrained(model, local_files_only=True).to_dict(), f"cached config of {model}")
    except Exception as e:  # not cached, or not a BERT-like config
        raise UsageError("model", f"{model!r} is not a local folder, not a cached hub model and not one of "
                         f"{', '.join(sorted(KNOWN_CONFIGS))}; pass its parameter count (model_params, "
                         f"e.g. 125M)") from e


def activation_bytes(shape: ModelShape, batch_size: int, seq_len: int, amp: Optional[str] = None) -> int:
    """Activations saved for backward by one training forward of `batch_size` x `seq_len` tokens:
    ACTIVATION_CALIBRATION * e * L * (s b (18 h + 4 I) + 5 a s^2 b), e = 1 with 16-bit autocast, 2 in fp32."""
    s, b = seq_len, batch_size
    per_layer = s * b * (18 * shape.hidden + 4 * shape.intermediate) + 5 * shape.heads * s * s * b
    e = 1 if amp in ("bf16", "fp16") else 2
    return int(ACTIVATION_CALIBRATION * e * shape.layers * per_layer)


def pq_bytes(docs: int, dim: int, m: int, opq: bool = False) -> Dict[str, int]:
    """PQIndex parts: codes N x M uint8, centroids M x 256 x d/M float32, OPQ rotation d x d float32."""
    out = {"codes": docs * m, "centroids": 256 * dim * 4}
    if opq:
        out["rotation"] = dim * dim * 4
    return out


def doc_id_bytes_of(docs: int, id_bytes: int) -> int:
    """A DocIdMap (common/doc_ids.py): N fixed-width byte strings + the sorting order (int32 below 2^31 rows)."""
    return docs * id_bytes + docs * (4 if docs < 2**31 else 8)


def native_scan_bytes(batch: int, k: int, nnz: int, block_rows: int, threads: int) -> int:
    """Working memory of one native fused scan (csrc/cpu/fused_scan.h ScanBuffers): per thread a block of
    scores and selections, per (query, thread) a candidate buffer of 2k + block, per (thread, positive) a count."""
    cap = 2 * k + block_rows
    return threads * (batch * block_rows * 4 + block_rows * 4 + batch * cap * CANDIDATE_BYTES + nnz * 8)


def placed_search_bytes(batch: int, nnz: int, k: int, docs: int, dim: int, kind: str, refine: bool,
                        chunk: int = GPU_PLACED_CHUNK) -> int:
    """Peak GPU working memory of one placed two-stage search (search.two_stage_torch over chunks of
    `chunk` rows, B = `batch` queries, `nnz` positives, first-pass `kind`), from what each step
    allocates, with c = min(chunk, docs), a block = B x c float32, Bp = B padded as TorchFirstPass
    pads it for torch._int_mm (> 16, a multiple of 8):
      bounds   int8: the int32 products [Bp, c] and a zero-padded copy of the chunk's codes when its
               rows are not a multiple of 8 (the last chunk: r x dp int8); bf16: the chunk's codes
               widened to float32 [c, dp]; then est, delta, lo, hi (4 blocks)
      top-k    products, lo, hi, the pool [B, k + c], the dense exact scores (1 block), a bool mask
               [B, c], and chunk_topk's stable sort of the chunk (values 1 block, int64 indices 2)
               with its workspace (assumed as large again: 3 blocks)
      ranks    products, lo, hi, the positives' bounds [nnz, c] x 2 float32 and 3 bool masks
      refine   (int8 with refinement codes) the larger of PAIR_BATCH pairs of 4 [pairs, dp] int64
               operands (a bound: a chunk with fewer undecided pairs allocates less) and the chunk's
               residual products [Bp, c] x 2 with padded copies of its codes (when many pairs are)
    The sort's workspace is an estimate; the rest follows the code."""
    c = min(chunk, docs)
    dp = padded_dim(dim, kind)
    bp = max(batch, 17)
    bp += (-bp) % 8
    block = batch * c * 4
    if kind == "int8":
        products = bp * c * 4
        last = docs - (-(-docs // c) - 1) * c
        operand = max([(n + (-n) % 8) * dp for n in {c, last} if n % 8] or [0])
    else:  # bf16: est = qb @ codes.float().T, and the product's result is est itself
        products, operand = 0, c * dp * 4
    bounds = products + 4 * block + operand
    topk = products + 2 * block + batch * (k + c) * 4 + block + batch * c + 3 * block + 3 * block
    ranks = products + 2 * block + 2 * nnz * c * 4 + 3 * nnz * c + c * 8
    pairs = min(PAIR_BATCH, batch * c) * dp * 8 * 4
    refined = max(pairs, 2 * products + 2 * operand) if refine and kind == "int8" else 0
    return max(bounds, topk, ranks) + refined


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    where: str
    note: str = ""


@dataclass
class MemoryPlan:
    """The parts of a training run, where each lives, and whether it fits (see the module's doc)."""

    parts: List[Part]
    capacity: Dict[str, Optional[int]]   # "gpu" (None: no GPU) and "host" (RAM), in bytes
    placement: Dict[str, Any]
    inputs: Dict[str, Any]
    notes: List[str] = field(default_factory=list)

    @property
    def totals(self) -> Dict[str, int]:
        """Bytes per place (every place, 0 where nothing lives)."""
        out = {p: 0 for p in PLACES}
        for part in self.parts:
            out[part.where] += part.bytes
        return out

    @property
    def host_ram(self) -> int:
        """Bytes of host RAM the run holds: host + pinned host (memory-mapped files are not counted)."""
        t = self.totals
        return t["host"] + t["pinned host"]

    @property
    def usable(self) -> Dict[str, Optional[int]]:
        return {p: None if c is None else int(c * (1 - SAFETY_MARGIN)) for p, c in self.capacity.items()}

    @property
    def fits_where(self) -> Dict[str, bool]:
        usable, t = self.usable, self.totals
        gpu_ok = t["gpu"] == 0 if usable["gpu"] is None else t["gpu"] <= usable["gpu"]
        return {"gpu": gpu_ok, "host": self.host_ram <= usable["host"]}

    @property
    def fits(self) -> bool:
        return all(self.fits_where.values())

    @property
    def rows_cached(self) -> bool:
        """Whether the memory-mapped rows fit in the page cache beside the host RAM the run holds (True
        without memory-mapped rows): else the exact rescoring reads rows from disk at every step."""
        mapped = self.totals["memory-mapped file"]
        return mapped == 0 or self.host_ram + mapped <= self.usable["host"]

    def to_dict(self) -> dict:
        return {"fits": self.fits, "fits_where": self.fits_where, "rows_cached": self.rows_cached,
                "placement": self.placement,
                "totals": self.totals, "host_ram": self.host_ram, "capacity": self.capacity, "usable": self.usable,
                "safety_margin": SAFETY_MARGIN, "parts": [asdict(p) for p in self.parts], "inputs": self.inputs,
                "notes": self.notes}

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        width = max(len(p.name) for p in self.parts) + 2
        lines = [f"{'part':<{width}}{'bytes':>11}  where"]
        lines += [f"{p.name:<{width}}{format_bytes(p.bytes):>11}  {p.where}" for p in self.parts]
        t, usable, ok = self.totals, self.usable, self.fits_where
        lines.append("")
        if usable["gpu"] is not None:
            lines.append(f"gpu total            {format_bytes(t['gpu']):>11}  of {format_bytes(usable['gpu'])} usable "
                         f"({format_bytes(self.capacity['gpu'])} less {SAFETY_MARGIN:.0%})  "
                         f"{'fits' if ok['gpu'] else 'DOES NOT FIT'}")
        host = format_bytes(usable['host'])
        lines.append(f"host RAM total       {format_bytes(self.host_ram):>11}  of {host} usable "
                     f"({format_bytes(self.capacity['host'])} less {SAFETY_MARGIN:.0%}; host + pinned host)  "
                     f"{'fits' if ok['host'] else 'DOES NOT FIT'}")
        if t["memory-mapped file"]:
            lines.append(f"memory-mapped        {format_bytes(t['memory-mapped file']):>11}  file-backed, read on "
                         f"demand: not counted against host RAM")
        lines.append(f"placement: {self.placement['summary']}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"verdict: {'FITS' if self.fits else 'DOES NOT FIT'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class PlannedRun:
    """What an ADORE (or, with train_centroids, JPQ) run holds: `docs` x `dim` embeddings stored as
    `dtype`, the index `index` ("flat" | "pq:M" | "opq:M") and a flat index's `first_pass` (None |
    "none" | "int8" | "int8-lean" | "bf16" | "auto": resolved per placement, see the module's doc;
    `first_pass_refine`: the int8 copy keeps its residual codes, FlatIndex's default), the encoder `model` (or `model_params`),
    `batch_size` queries of `query_max_length` tokens and `k` candidates. doc_id_bytes: the longest
    document id (default DEFAULT_DOC_ID_BYTES); positives_per_query: for the pair weights [nnz, k];
    document_tower: a copy of the encoder's weights stays on the host (drfast adore loads both
    towers; not with a saved index). The fields with a help are `drfast plan`'s (and `check`'s) flags."""

    docs: int = option(200_000, "rows of the corpus (check: of the random corpus; plan: documents to plan for)",
                       metavar="N")
    dim: int = option(768, "dimension of the vectors (check: random ones; plan: the embeddings')", metavar="D")
    index: str = "flat"
    first_pass: Optional[str] = None
    dtype: str = "float16"
    model: Optional[str] = None
    model_params: Optional[str] = option(None, "parameters of the encoder instead of --model, e.g. 125M or "
                                               "110000000 (the layers of the known model nearest in size are "
                                               "assumed)", metavar="COUNT")
    batch_size: int = 32
    k: int = 200
    query_max_length: Optional[int] = 32
    amp: Optional[str] = None
    train_centroids: bool = False
    positives_per_query: float = 1.0
    doc_id_bytes: Optional[int] = None
    document_tower: bool = True
    first_pass_refine: bool = True

    @classmethod
    def of_adore(cls, config: Any, **fields: Any) -> "PlannedRun":
        """The run of an AdoreConfig `config` (its batch size, k, amp and train_centroids) and `fields`."""
        return cls(batch_size=config.batch_size, k=config.k, amp=config.amp, train_centroids=config.train_centroids,
                   **fields)


@dataclass(frozen=True)
class _Checked:
    """A PlannedRun's values checked and resolved: what the parts are computed from."""

    shape: ModelShape
    docs: int
    dim: int
    kind: str
    m: int
    fp: Optional[str]
    batch: int
    seq: int
    k: int
    nnz: int
    dtype: str
    id_bytes: int
    amp: Optional[str]
    train_centroids: bool
    threads: int
    document_tower: bool
    refine: bool
    auto: bool  # first_pass "auto": fp and refine are chosen per placement (_first_pass_variants)

    @property
    def spec(self) -> Optional[str]:
        """The first pass as a spec: None, "int8", "int8-lean" or "bf16"."""
        return "int8-lean" if self.fp == "int8" and not self.refine else self.fp


def _check_run(run: PlannedRun, threads: Optional[int]) -> _Checked:
    docs, dim = check_int(run.docs, "docs", 1), check_int(run.dim, "dim", 1)
    batch_size, k = check_int(run.batch_size, "batch_size", 1), check_int(run.k, "k", 1)
    seq = check_int(32 if run.query_max_length is None else run.query_max_length, "query_max_length", 1)
    if k > docs:
        raise UsageError("k", f"{k} candidates asked but the corpus has only {docs} documents")
    check_choice(run.dtype, "dtype", tuple(DTYPES))
    check_choice(run.amp, "amp", AMP)
    for name in ("train_centroids", "document_tower", "first_pass_refine"):
        check_bool(getattr(run, name), name)
    check_float(run.positives_per_query, "positives_per_query", 0.0)
    id_bytes = check_int(DEFAULT_DOC_ID_BYTES if run.doc_id_bytes is None else run.doc_id_bytes, "doc_id_bytes", 1)
    threads = check_int(get_num_threads() if threads is None else threads, "threads", 1)
    kind, m = parse_index_spec(run.index)
    if kind != "flat" and dim % m:
        raise UsageError("index", f"{run.index} needs M dividing the dimension {dim}")
    fp = parse_first_pass(run.first_pass)
    if fp is not None and kind != "flat":
        raise UsageError("first_pass", f"the two-stage search is for a flat index, not {run.index}")
    if run.train_centroids and kind == "flat":
        raise UsageError("train_centroids", "trains the centroids of a PQ index (pq:M or opq:M); a flat index has none")
    return _Checked(model_shape(run.model, run.model_params), docs, dim, kind, m, fp, batch_size, seq, k,
                    max(1, round(batch_size * run.positives_per_query)), run.dtype, id_bytes, run.amp,
                    run.train_centroids, threads, run.document_tower,
                    run.first_pass_refine and first_pass_refines(run.first_pass),  # False for "int8-lean"
                    isinstance(run.first_pass, str) and run.first_pass.strip().lower() == "auto")


def plan_memory(run: PlannedRun, *, gpu_memory: Any = None, host_memory: Any = None,
                threads: Optional[int] = None) -> MemoryPlan:
    """The memory plan of the run `run` (see PlannedRun) on a machine with `gpu_memory` (bytes or a
    size, "11GB"; None: the free memory of this machine's CUDA device, 0 if none; 0: no GPU) and
    `host_memory` (likewise; None: this machine's available memory); `threads` of the native CPU
    search (default: drfast's thread count)."""
    if not isinstance(run, PlannedRun):
        raise UsageTypeError("run", f"expected a PlannedRun, got {type(run).__name__}")
    r = _check_run(run, threads)
    gpu = detect_gpu_memory() if gpu_memory is None else parse_size(gpu_memory, "gpu_memory")
    host = detect_host_memory() if host_memory is None else parse_size(host_memory, "host_memory")
    if host <= 0:
        raise UsageError("host_memory", f"must be > 0, got {host_memory!r}")
    capacity = {"gpu": gpu if gpu > 0 else None, "host": host}
    tried: List[MemoryPlan] = []
    for choice, rv, leaner_next in _candidates(r, gpu):
        plan = MemoryPlan(_parts(choice, rv), capacity, _placement(choice, rv), _inputs(run, rv))
        tried.append(plan)
        # "auto" keeps an int8 copy's refinement codes on the CPU only if the rows stay cached beside it
        if plan.fits and (plan.rows_cached or not leaner_next or choice == "gpu-first-pass"):
            break
    plan.notes.extend(_notes(plan, tried, r, gpu))
    return plan


def _candidates(r: _Checked, gpu: int) -> List[tuple]:
    """(placement, the run with its first pass for it, whether a leaner first pass follows) in the
    order plan_memory tries them."""
    if gpu <= 0:
        choices = ["host"]
    elif r.train_centroids:
        choices = ["gpu"]
    elif r.kind == "flat" and (r.fp is not None or r.auto):
        choices = ["gpu", "gpu-first-pass", "mixed"]
    else:
        choices = ["gpu", "mixed"]
    out = []
    for choice in choices:
        variants = _first_pass_variants(choice, r)
        out += [(choice, dataclasses.replace(r, fp=fp, refine=refine), i + 1 < len(variants))
                for i, (fp, refine) in enumerate(variants)]
    return out


def _first_pass_variants(choice: str, r: _Checked) -> List[tuple]:
    """(kind, refine) of the first pass tried under `choice`: as given, or for "auto" the kind of
    where the first pass runs (int8 on the GPU of "gpu-first-pass", else this CPU's resolve_auto),
    an int8 copy with its refinement codes first, then without ("int8-lean")."""
    if not r.auto:
        return [(r.fp, r.refine)]
    kind = "int8" if choice == "gpu-first-pass" else resolve_auto()
    if kind != "int8":
        return [(kind, False)]
    return [("int8", True), ("int8", False)] if r.refine else [("int8", False)]


def _inputs(run: PlannedRun, r: _Checked) -> Dict[str, Any]:
    shape = r.shape
    return {"docs": r.docs, "dim": r.dim, "index": run.index, "first_pass": r.fp, "model": run.model,
            "params": shape.params, "hidden": shape.hidden, "layers": shape.layers, "heads": shape.heads,
            "intermediate": shape.intermediate, "model_source": shape.source, "batch_size": r.batch, "k": r.k,
            "query_max_length": r.seq, "dtype": r.dtype, "doc_id_bytes": r.id_bytes, "amp": r.amp or "none",
            "train_centroids": r.train_centroids, "positives_per_query": run.positives_per_query,
            "threads": r.threads, "document_tower": r.document_tower, "first_pass_refine": r.refine,
            "first_pass_requested": run.first_pass, "first_pass_spec": r.spec}


def _notes(plan: MemoryPlan, tried: List[MemoryPlan], r: _Checked, gpu: int) -> List[str]:
    """What a reader of the plan should know: why the encoder's index stays put (train_centroids), why
    the first pass is not on the GPU, and what memory-mapped rows that will not stay cached cost."""
    notes = []
    if r.train_centroids and gpu > 0 and not plan.fits:
        notes.append("train_centroids keeps the index with the encoder (its centroids are trained), so it "
                     "cannot move to the host")
    placed = [p for p in tried if p.placement["name"] == "gpu-first-pass"]
    if placed and plan.placement["name"] not in ("gpu", "gpu-first-pass"):
        best = min(placed, key=lambda p: p.totals["gpu"])
        spec = best.placement["first_pass_spec"]
        lean = "int8-lean (half the copy), " if spec == "int8" else ""
        notes.append(f"gpu-first-pass (the encoder and the {spec} first pass on the GPU, exact rows on the host) "
                     f"needs {format_bytes(best.totals['gpu'])} of GPU memory, {format_bytes(best.usable['gpu'])} "
                     f"usable: {lean}a smaller batch or more GPU memory would let the first pass run on the GPU")
    if not plan.rows_cached:
        mapped = plan.totals["memory-mapped file"]
        notes.append(f"warning: the memory-mapped exact rows ({format_bytes(mapped)}) will not stay in the page "
                     f"cache beside the {format_bytes(plan.host_ram)} of host RAM the run holds "
                     f"({format_bytes(plan.usable['host'])} usable): the exact rescoring reads rows at random, so "
                     f"rows evicted from the cache are read from disk at every step; {PAGE_CACHE_COST}. More RAM, "
                     f"int8-lean, or the first pass on the GPU leaves more of it to the page cache")
    return notes


def _placement(choice: str, r: _Checked) -> Dict[str, Any]:
    kind, fp, dtype = r.kind, r.spec, r.dtype
    index_at = "gpu" if choice == "gpu" else "host"
    fp_at = "gpu" if choice in ("gpu", "gpu-first-pass") else "host"
    out = {"name": choice, "encoder": "host" if choice == "host" else "gpu", "index": index_at,
           "search": "gpu" if choice in ("gpu", "gpu-first-pass") else "cpu"}
    if kind == "flat":
        rows = "gpu" if choice == "gpu" else "memory-mapped file" if fp else "host"
        out.update(exact_rows=rows, first_pass=None if fp is None else fp_at, first_pass_spec=fp)
        where = {"gpu": "in GPU memory", "host": "in host RAM", "memory-mapped file": "memory-mapped"}[rows]
        index_text = f"flat index: exact rows ({dtype}) {where}"
        if fp:
            index_text += f", first pass ({fp})" + ("" if choice == "gpu" else " in GPU memory" if fp_at == "gpu"
                                                     else " in host RAM")
    else:
        index_text = f"{kind} index: codes and centroids {'in GPU memory' if choice == 'gpu' else 'in host RAM'}"
    summary = {"gpu": f"all on the GPU ({index_text}; search on the GPU)",
               "gpu-first-pass": f"encoder and first pass on the GPU, exact rows on the host ({index_text}; first "
                                 f"pass and bounds on the GPU, undecided pairs scored exactly on the CPU, candidate "
                                 f"rows copied to the GPU through pinned buffers)",
               "mixed": f"encoder on the GPU, index on the host ({index_text}; search on the CPU, candidates "
                        f"copied to the GPU through pinned buffers)",
               "host": f"all on the host ({index_text}; search on the CPU)"}[choice]
    out["summary"] = summary
    return out


def _parts(choice: str, r: _Checked) -> List[Part]:
    """Every part of the run `r` under the placement `choice` ("gpu", "gpu-first-pass", "mixed" or "host")."""
    return _encoder_parts(choice, r) + _index_parts(choice, r) + _step_parts(choice, r)


def _encoder_parts(choice: str, r: _Checked) -> List[Part]:
    enc = "host" if choice == "host" else "gpu"
    P = r.shape.params
    parts = [Part(f"query encoder weights (fp32, {P / 1e6:.1f}M params)", 4 * P, enc),
             Part("gradients (fp32)", 4 * P, enc),
             Part("AdamW state (2 x fp32 per param)", 8 * P, enc),
             Part(f"activations ({r.batch} x {r.seq} tokens, {'fp32' if r.amp in (None, 'none') else r.amp})",
                  activation_bytes(r.shape, r.batch, r.seq, r.amp), enc, "estimate, see activation_bytes")]
    if r.amp in ("bf16", "fp16"):  # autocast caches its casts of the weights, which backward keeps
        parts.append(Part(f"16-bit copies of the weights (autocast, {r.amp})", 2 * P, enc))
    if r.document_tower:
        parts.append(Part("document tower weights (fp32, stays on the host)", 4 * P, "host"))
    if enc == "gpu":
        parts.append(Part("CUDA context", CUDA_CONTEXT_BYTES, "gpu"))
    parts.append(Part("Python, torch, transformers", PROCESS_BYTES, "host"))
    return parts


def _index_parts(choice: str, r: _Checked) -> List[Part]:
    idx = "gpu" if choice == "gpu" else "host"
    parts = []
    if r.kind == "flat":
        rows_at = "gpu" if choice == "gpu" else "memory-mapped file" if r.fp else "host"
        parts.append(Part(f"exact rows ({r.docs:,} x {r.dim} {r.dtype})", r.docs * r.dim * DTYPES[r.dtype], rows_at))
        if r.fp:
            refined = r.fp == "int8" and r.refine
            parts.append(Part(f"first-pass copy ({r.spec}{', with refinement' if refined else ''})",
                              first_pass_bytes(r.docs, r.dim, r.fp, refined),
                              "gpu" if choice == "gpu-first-pass" else idx))
    else:
        pq = pq_bytes(r.docs, r.dim, r.m, r.kind == "opq")
        parts.append(Part(f"PQ codes ({r.docs:,} x {r.m} uint8)", pq["codes"], idx))
        parts.append(Part(f"PQ centroids ({r.m} x 256 x {r.dim // r.m} fp32)", pq["centroids"], idx))
        if "rotation" in pq:
            parts.append(Part(f"OPQ rotation ({r.dim} x {r.dim} fp32)", pq["rotation"], idx))
        if r.train_centroids:
            parts.append(Part("centroid gradients + AdamW state (3 x fp32)", 3 * pq["centroids"], idx))
    parts.append(Part(f"document ids ({r.id_bytes} bytes each + order)", doc_id_bytes_of(r.docs, r.id_bytes), "host"))
    return parts


def _step_parts(choice: str, r: _Checked) -> List[Part]:
    """What one training step allocates: the search's results and buffers, the gathered rows."""
    B, k, nnz = r.batch, r.k, r.nnz
    search_at = "gpu" if choice == "gpu" else "host"
    parts = [Part(f"top-k ids and scores ({B} x {k} x 12)", B * k * 12, search_at),
             Part(f"pair weights ({nnz} x {k} x 4)", nnz * k * 4, search_at)]
    if search_at == "gpu":  # torch path: a [B, chunk] score block and its top-k / comparison temporaries
        scan = (4 if r.fp else 3) * B * DEFAULT_CHUNK * 4
        parts.append(Part(f"search chunk buffers ({B} x {DEFAULT_CHUNK} rows)", scan, "gpu", "estimate"))
    elif choice == "gpu-first-pass":  # results come back to the host rows' side (the index is on the host)
        chunk = min(GPU_PLACED_CHUNK, r.docs)
        parts.append(Part(f"placed search buffers ({B} x {chunk} rows a chunk)",
                          placed_search_bytes(B, nnz, k, r.docs, r.dim, r.fp, r.refine), "gpu",
                          "see placed_search_bytes (the sort workspace is an estimate)"))
        parts.append(Part("search results on the GPU (top-k, pair weights)", B * k * 12 + nnz * k * 4, "gpu"))
        # HostPairScorer: per pair its query, row, order and sorted row (int64), score and result (float32)
        parts.append(Part(f"exact scoring of undecided pairs ({PAIR_BATCH} at a time)", PAIR_BATCH * 40, "host"))
    else:
        block = PQ_BLOCK_ROWS if r.kind != "flat" else FIRST_PASS_BLOCK_ROWS if r.fp else FLAT_BLOCK_ROWS
        parts.append(Part(f"native scan buffers ({r.threads} threads)",
                          native_scan_bytes(B, k, nnz, block, r.threads), "host"))
    rows = (B * k + nnz) * r.dim * 4
    parts.append(Part(f"gathered candidate + positive rows ({B * k + nnz} x {r.dim} fp32)", rows, search_at))
    if choice in ("mixed", "gpu-first-pass"):
        crossing = rows + B * k * 8 + nnz * k * 4
        parts.append(Part("pinned staging of rows, ids and weights", crossing, "pinned host"))
        parts.append(Part("rows, ids and weights on the GPU", crossing, "gpu"))
    if r.train_centroids:
        parts.append(Part("gradient of the decoded rows", rows, "host" if choice == "host" else "gpu"))
    return parts


def plan_adore_run(run: PlannedRun, *, device: str = "auto", gpu_memory: Any = None, doc_ids: Any = None,
                   ignore_plan: bool = False) -> Optional[MemoryPlan]:
    """The plan of a `drfast adore` run (see PlannedRun.of_adore; `device` as run_adore's). The GPU is
    planned only when a CUDA device will be used: `gpu_memory`, default that device's free memory.
    `doc_ids` (a DocIdMap) gives the real id width. A plan that does not fit raises UsageError (naming
    gpu_memory, else the memory plan) unless `ignore_plan`. None (with a logged warning) when the
    model's shape is unknown (a config without BERT-like sizes): the run is then not planned."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    if not cuda:
        gpu_memory = 0
    elif gpu_memory is None:
        gpu_memory = detect_gpu_memory(None if device == "auto" else torch.device(device))
    if doc_ids is not None and len(doc_ids) and hasattr(doc_ids, "nbytes"):
        id_bytes = max(1, -(-doc_ids.nbytes // len(doc_ids)) - (4 if len(doc_ids) < 2**31 else 8))
        run = dataclasses.replace(run, doc_id_bytes=id_bytes)
    try:
        model_shape(run.model)
    except ValueError as e:
        logger.warning("memory plan skipped: %s", e)
        return None
    plan = plan_memory(run, gpu_memory=gpu_memory)
    if not plan.fits and not ignore_plan:
        gpu = not plan.fits_where["gpu"]
        need, have = (plan.totals["gpu"], plan.usable["gpu"]) if gpu else (plan.host_ram, plan.usable["host"])
        raise UsageError("gpu_memory" if gpu else "memory plan",
                         f"the run does not fit: it needs {format_bytes(need)} of "
                         f"{'GPU memory' if gpu else 'host RAM'}, {format_bytes(have)} is usable (placement: "
                         f"{plan.placement['summary']}); lower the batch size, use a first pass or a PQ index, "
                         f"or pass ignore_plan (--ignore-plan) to train anyway")
    return plan


def planned_first_pass(requested: Optional[str], plan: Optional[MemoryPlan]) -> Optional[str]:
    """The first_pass to build a flat index with under `plan`: "auto" as the plan resolved it for the
    placement it chose (e.g. "int8-lean" for the first pass on an 11 GB GPU); anything else, or no
    plan, as `requested`."""
    if plan is None or not (isinstance(requested, str) and requested.strip().lower() == "auto"):
        return requested
    return plan.placement.get("first_pass_spec") or "none"


def place_for_plan(index: Any, device: Any, plan: Optional[MemoryPlan]) -> Any:
    """`index` where `plan` puts it for a run whose encoder is on `device`: all of it on the device
    (placement "gpu", or no plan), only its first-pass copy there with the exact rows left on the
    host ("gpu-first-pass": FlatIndex(first_pass_device=...)'s placed search), or left as it is
    ("mixed", "host")."""
    name = None if plan is None else plan.placement["name"]
    if name is None or name == "gpu":
        return index.to(device)
    if name != "gpu-first-pass":
        return index
    data = getattr(index, "first_pass_data", None)
    if data is None:  # e.g. a saved index without a first pass: nothing to place
        logger.warning("the plan puts the first pass on %s but the index has none; it stays on the host", device)
        return index
    return FlatIndex.from_parts(index.emb, index.doc_ids, place_first_pass(data, index.emb, device),
                                index.first_pass_rows_print)
