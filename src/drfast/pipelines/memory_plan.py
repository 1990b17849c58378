"""Where every part of an ADORE / JPQ training run lives, and whether it fits (`drfast plan`).

`plan_memory(docs=..., dim=..., ...)` returns a `MemoryPlan`: the parts (name, bytes, where), the
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
  2. "mixed" (a GPU, the index too big for it; not with train_centroids, whose centroids must live with
             the encoder) the encoder on the GPU, the index in host memory searched by the native CPU
             kernel: only the queries, the candidate ids / pair weights and the gathered candidate rows
             cross the bus (pinned buffers, non-blocking copies). A flat index with a first pass keeps
             the first-pass copy in RAM and its exact rows memory-mapped (the exact two-stage search reads
             only the few rows it rescores); without a first pass the exact scan reads every row at every
             step, so the rows count as RAM.
  3. "host"  (no GPU) everything in host memory, searched on the CPU (exact rows as in 2.).

Sizes are computed from the same layouts the code allocates (tests compare them with a built
`FirstPassData` and `PQIndex`); the activation memory is an estimate (see `activation_bytes`). `fits`
requires every place's total to stay within its capacity less SAFETY_MARGIN (5%); the GPU's total
includes the CUDA context (CUDA_CONTEXT_BYTES) and the host's the process itself (PROCESS_BYTES).
Not counted: transient peaks while the index is built (a first-pass copy is built in host RAM
before it moves to the GPU; PQ training reads the embeddings), evaluation batches, the OS page cache.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from drfast.common.checks import check_bool, check_choice, check_float, check_int
from drfast.common.errors import UsageError, UsageTypeError
from drfast.common.sizes import format_bytes, parse_count, parse_size
from drfast.index.spec import parse_index_spec
from drfast.search.runtime import get_num_threads
from drfast.search.torch_path import DEFAULT_CHUNK
from drfast.search.two_stage import first_pass_refines, padded_dim, parse_first_pass

PLACES = ("gpu", "pinned host", "host", "memory-mapped file")
SAFETY_MARGIN = 0.05                 # of each capacity: allocator fragmentation, estimates' error
CUDA_CONTEXT_BYTES = 500 * 10**6     # CUDA context + cuBLAS workspaces, outside torch's allocator
PROCESS_BYTES = 450 * 10**6          # Python + torch + transformers + drfast imported: 422 MB RSS measured
DEFAULT_DOC_ID_BYTES = 8             # per id when the longest id is not known
# Native CPU scan (csrc/cpu/isa_kernels.h, first_pass_kernels.h): rows per block and bytes per candidate
FLAT_BLOCK_ROWS, PQ_BLOCK_ROWS, FP_BLOCK_ROWS, CANDIDATE_BYTES = 120, 256, 240, 16
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


def first_pass_bytes(docs: int, dim: int, kind: str, refine: bool = True) -> int:
    """Bytes of search.two_stage.FirstPassData for `docs` rows: int8 codes N x dp, stats 3N float32,
    sums N int32 (+ with refine: residual codes N x dp int8, 4N float32, N int32); bf16: N x dp x 2 + 3N
    float32 (dp = padded_dim(d, kind))."""
    dp = padded_dim(dim, kind)
    if kind == "int8":
        return docs * (dp + 12 + 4) + (docs * (dp + 16 + 4) if refine else 0)
    return docs * (dp * 2 + 12)


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


def detect_gpu_memory(device: Any = None) -> int:
    """Free bytes of the CUDA device `device` (default: the current one), 0 without one."""
    import torch

    if not torch.cuda.is_available():
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def detect_host_memory() -> int:
    """Host memory available now (psutil when installed, else MemAvailable of /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        return info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError) as e:
        raise UsageError("host_memory", "cannot read this machine's memory (no psutil, no /proc/meminfo); "
                         "give it explicitly") from e


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

    def to_dict(self) -> dict:
        return {"fits": self.fits, "fits_where": self.fits_where, "placement": self.placement,
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


def plan_memory(*, docs: int, dim: int, index: str = "flat", first_pass: Optional[str] = None,
                model: Optional[str] = None, model_params: Any = None, batch_size: int = 32, k: int = 200,
                query_max_length: Optional[int] = 32, gpu_memory: Any = None, host_memory: Any = None,
                dtype: str = "float16", doc_id_bytes: Optional[int] = None, amp: Optional[str] = None,
                train_centroids: bool = False, positives_per_query: float = 1.0,
                threads: Optional[int] = None, document_tower: bool = True,
                first_pass_refine: bool = True) -> MemoryPlan:
    """The memory plan of an ADORE (or, with train_centroids, JPQ) run over `docs` x `dim` embeddings
    stored as `dtype`, with the index `index` ("flat" | "pq:M" | "opq:M") and a flat index's
    `first_pass` (None | "none" | "int8" | "bf16" | "auto": resolved on this CPU), the encoder
    `model` (or `model_params`), `batch_size` queries of `query_max_length` tokens and `k` candidates.

    gpu_memory: bytes or a size ("11GB"); None: the free memory of this machine's CUDA device (0 if none);
    0: no GPU. host_memory: likewise; None: this machine's available memory. doc_id_bytes: the longest
    document id (default DEFAULT_DOC_ID_BYTES). positives_per_query: for the pair weights [nnz, k].
    threads: of the native CPU search (default: drfast's thread count). document_tower: a copy of the
    encoder's weights stays on the host (drfast adore loads both towers; not with a saved index).
    first_pass_refine: the int8 copy has its residual codes (FlatIndex's default; False halves it)."""
    docs, dim = check_int(docs, "docs", 1), check_int(dim, "dim", 1)
    batch_size, k = check_int(batch_size, "batch_size", 1), check_int(k, "k", 1)
    seq = check_int(32 if query_max_length is None else query_max_length, "query_max_length", 1)
    if k > docs:
        raise UsageError("k", f"{k} candidates asked but the corpus has only {docs} documents")
    check_choice(dtype, "dtype", tuple(DTYPES))
    check_choice(amp, "amp", AMP)
    check_bool(train_centroids, "train_centroids")
    check_bool(document_tower, "document_tower")
    check_bool(first_pass_refine, "first_pass_refine")
    check_float(positives_per_query, "positives_per_query", 0.0)
    id_bytes = check_int(DEFAULT_DOC_ID_BYTES if doc_id_bytes is None else doc_id_bytes, "doc_id_bytes", 1)
    threads = check_int(get_num_threads() if threads is None else threads, "threads", 1)
    kind, m = parse_index_spec(index)
    if kind != "flat" and dim % m:
        raise UsageError("index", f"{index} needs M dividing the dimension {dim}")
    fp = parse_first_pass(first_pass)
    first_pass_refine = first_pass_refine and first_pass_refines(first_pass)  # False for "int8-lean"
    if fp is not None and kind != "flat":
        raise UsageError("first_pass", f"the two-stage search is for a flat index, not {index}")
    if train_centroids and kind == "flat":
        raise UsageError("train_centroids", "trains the centroids of a PQ index (pq:M or opq:M); a flat index has none")
    gpu = detect_gpu_memory() if gpu_memory is None else parse_size(gpu_memory, "gpu_memory")
    host = detect_host_memory() if host_memory is None else parse_size(host_memory, "host_memory")
    if host <= 0:
        raise UsageError("host_memory", f"must be > 0, got {host_memory!r}")
    shape = model_shape(model, model_params)
    inputs = {"docs": docs, "dim": dim, "index": index, "first_pass": fp, "model": model, "params": shape.params,
              "hidden": shape.hidden, "layers": shape.layers, "heads": shape.heads, "intermediate": shape.intermediate,
              "model_source": shape.source, "batch_size": batch_size, "k": k, "query_max_length": seq,
              "dtype": dtype, "doc_id_bytes": id_bytes, "amp": amp or "none", "train_centroids": train_centroids,
              "positives_per_query": positives_per_query, "threads": threads, "document_tower": document_tower,
              "first_pass_refine": first_pass_refine}
    nnz = max(1, round(batch_size * positives_per_query))
    options = ["host"] if gpu <= 0 else ["gpu"] if train_centroids else ["gpu", "mixed"]
    plan = None
    for choice in options:
        plan = MemoryPlan(_parts(choice, shape, docs, dim, kind, m, fp, batch_size, seq, k, nnz, dtype, id_bytes,
                                 amp, train_centroids, threads, document_tower, first_pass_refine),
                          {"gpu": gpu if gpu > 0 else None, "host": host},
                          _placement(choice, kind, fp, dtype), inputs)
        if plan.fits:
            break
    if train_centroids and gpu > 0 and not plan.fits:
        plan.notes.append("train_centroids keeps the index with the encoder (its centroids are trained), so it "
                          "cannot move to the host")
    return plan


def _placement(choice: str, kind: str, fp: Optional[str], dtype: str) -> Dict[str, Any]:
    index_at = "gpu" if choice == "gpu" else "host"
    out = {"name": choice, "encoder": "host" if choice == "host" else "gpu", "index": index_at,
           "search": "gpu" if choice == "gpu" else "cpu"}
    if kind == "flat":
        rows = "gpu" if choice == "gpu" else "memory-mapped file" if fp else "host"
        out.update(exact_rows=rows, first_pass=None if fp is None else index_at)
        fp_text = f", first pass ({fp})" if fp else ""
        where = {"gpu": "in GPU memory", "host": "in host RAM", "memory-mapped file": "memory-mapped"}[rows]
        index_text = f"flat index: exact rows ({dtype}) {where}{fp_text}"
        if fp and choice != "gpu":
            index_text += " in host RAM"
    else:
        index_text = f"{kind} index: codes and centroids {'in GPU memory' if choice == 'gpu' else 'in host RAM'}"
    summary = {"gpu": f"all on the GPU ({index_text}; search on the GPU)",
               "mixed": f"encoder on the GPU, index on the host ({index_text}; search on the CPU, candidates "
                        f"copied to the GPU through pinned buffers)",
               "host": f"all on the host ({index_text}; search on the CPU)"}[choice]
    out["summary"] = summary
    return out


def _parts(choice, shape, docs, dim, kind, m, fp, B, seq, k, nnz, dtype, id_bytes, amp, train_centroids,
           threads, document_tower, refine=True) -> List[Part]:
    enc = "host" if choice == "host" else "gpu"
    idx = "gpu" if choice == "gpu" else "host"
    P = shape.params
    parts = [Part(f"query encoder weights (fp32, {P / 1e6:.1f}M params)", 4 * P, enc),
             Part("gradients (fp32)", 4 * P, enc),
             Part("AdamW state (2 x fp32 per param)", 8 * P, enc),
             Part(f"activations ({B} x {seq} tokens, {'fp32' if amp in (None, 'none') else amp})",
                  activation_bytes(shape, B, seq, amp), enc, "estimate, see activation_bytes")]
    if document_tower:
        parts.append(Part("document tower weights (fp32, stays on the host)", 4 * P, "host"))
    if enc == "gpu":
        parts.append(Part("CUDA context", CUDA_CONTEXT_BYTES, "gpu"))
    parts.append(Part("Python, torch, transformers", PROCESS_BYTES, "host"))
    esize = DTYPES[dtype]
    if kind == "flat":
        rows_at = "gpu" if choice == "gpu" else "memory-mapped file" if fp else "host"
        parts.append(Part(f"exact rows ({docs:,} x {dim} {dtype})", docs * dim * esize, rows_at))
        if fp:
            refined = fp == "int8" and refine
            parts.append(Part(f"first-pass copy ({fp}{', with refinement' if refined else ''})",
                              first_pass_bytes(docs, dim, fp, refined), idx))
        block = FP_BLOCK_ROWS if fp else FLAT_BLOCK_ROWS
    else:
        pq = pq_bytes(docs, dim, m, kind == "opq")
        parts.append(Part(f"PQ codes ({docs:,} x {m} uint8)", pq["codes"], idx))
        parts.append(Part(f"PQ centroids ({m} x 256 x {dim // m} fp32)", pq["centroids"], idx))
        if "rotation" in pq:
            parts.append(Part(f"OPQ rotation ({dim} x {dim} fp32)", pq["rotation"], idx))
        if train_centroids:
            parts.append(Part("centroid gradients + AdamW state (3 x fp32)", 3 * pq["centroids"], idx))
        block = PQ_BLOCK_ROWS
    parts.append(Part(f"document ids ({id_bytes} bytes each + order)", doc_id_bytes_of(docs, id_bytes), "host"))
    # per step
    search_at = "gpu" if choice == "gpu" else "host"
    parts.append(Part(f"top-k ids and scores ({B} x {k} x 12)", B * k * 12, search_at))
    parts.append(Part(f"pair weights ({nnz} x {k} x 4)", nnz * k * 4, search_at))
    if search_at == "gpu":  # torch path: a [B, chunk] score block and its top-k / comparison temporaries
        scan = (4 if fp else 3) * B * DEFAULT_CHUNK * 4
        parts.append(Part(f"search chunk buffers ({B} x {DEFAULT_CHUNK} rows)", scan, "gpu", "estimate"))
    else:
        parts.append(Part(f"native scan buffers ({threads} threads)", native_scan_bytes(B, k, nnz, block, threads),
                          "host"))
    rows = (B * k + nnz) * dim * 4
    parts.append(Part(f"gathered candidate + positive rows ({B * k + nnz} x {dim} fp32)", rows, search_at))
    if choice == "mixed":
        crossing = rows + B * k * 8 + nnz * k * 4
        parts.append(Part("pinned staging of rows, ids and weights", crossing, "pinned host"))
        parts.append(Part("rows, ids and weights on the GPU", crossing, "gpu"))
    if train_centroids:
        parts.append(Part("gradient of the decoded rows", rows, enc))
    return parts


def plan_adore_run(*, docs: int, dim: int, index: str, first_pass: Optional[str], model: str, config: Any,
                   device: str = "auto", gpu_memory: Any = None, dtype: str = "float16",
                   query_max_length: Optional[int] = None, doc_ids: Any = None, document_tower: bool = True,
                   ignore_plan: bool = False, show: bool = True) -> Optional[MemoryPlan]:
    """The plan of a `drfast adore` run (an AdoreConfig `config`; `device` as run_adore's). The GPU is
    planned only when a CUDA device will be used: `gpu_memory`, default that device's free memory.
    `doc_ids` (a DocIdMap) gives the real id width. Prints the table when `show`; a plan that does not
    fit raises ValueError (naming gpu_memory) unless `ignore_plan`. None (with a printed reason) when the
    model's shape is unknown (a config without BERT-like sizes): the run is then not planned."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    if not cuda:
        gpu_memory = 0
    elif gpu_memory is None:
        gpu_memory = detect_gpu_memory(None if device == "auto" else torch.device(device))
    id_bytes = None
    if doc_ids is not None and len(doc_ids) and hasattr(doc_ids, "nbytes"):
        id_bytes = max(1, -(-doc_ids.nbytes // len(doc_ids)) - (4 if len(doc_ids) < 2**31 else 8))
    try:
        model_shape(model)
    except ValueError as e:
        print(f"memory plan skipped: {e}", flush=True)
        return None
    plan = plan_memory(docs=docs, dim=dim, index=index, first_pass=first_pass, model=model,
                       batch_size=config.batch_size, k=config.k, query_max_length=query_max_length,
                       gpu_memory=gpu_memory, dtype=dtype, doc_id_bytes=id_bytes, amp=config.amp,
                       train_centroids=config.train_centroids, document_tower=document_tower)
    if show:
        print(plan.table(), flush=True)
    if not plan.fits and not ignore_plan:
        gpu = not plan.fits_where["gpu"]
        need, have = (plan.totals["gpu"], plan.usable["gpu"]) if gpu else (plan.host_ram, plan.usable["host"])
        raise ValueError(f"{'gpu_memory: the run' if gpu else 'memory plan: the run'} does not fit: it needs "
                         f"{format_bytes(need)} of {'GPU memory' if gpu else 'host RAM'}, {format_bytes(have)} is "
                         f"usable "
                         f"(placement: {plan.placement['summary']}); lower the batch size, use a first pass or a PQ "
                         f"index, or pass ignore_plan (--ignore-plan) to train anyway")
    return plan
