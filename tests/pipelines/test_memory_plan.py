"""The memory planner: parts and totals, placements at MS MARCO scale, the sizes of the real data
structures (so the planner cannot drift from the code), `drfast plan`, ADORE's use of the plan and
the mixed placement of its step (index on the host, queries on another device)."""
import json
import types
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import drfast
from drfast.cli import main
from drfast.common.doc_ids import DocIdMap
from drfast.common.sizes import format_bytes, parse_count, parse_size
from drfast.pipelines import memory_plan as mp
from drfast.pipelines.memory_plan import PLACES, PlannedRun
from drfast.search import first_pass as fp_mod
from drfast.search.first_pass import build_first_pass
from drfast.train.adore import AdoreConfig, adore_batch_loss, to_device


def plan_memory(gpu_memory=None, host_memory=None, threads=None, **run):
    """mp.plan_memory of a PlannedRun of `run`, on the machine given."""
    return mp.plan_memory(PlannedRun(**run), gpu_memory=gpu_memory, host_memory=host_memory, threads=threads)


MSMARCO = dict(docs=8_841_823, dim=768, model="roberta-base", batch_size=32, gpu_memory="11GB", host_memory="24GB")


def part(plan, prefix):
    found = [p for p in plan.parts if p.name.startswith(prefix)]
    assert len(found) == 1, (prefix, [p.name for p in plan.parts])
    return found[0]


@pytest.mark.parametrize("kwargs", [dict(index="flat", first_pass="int8"), dict(index="flat"),
                                    dict(index="pq:96"), dict(index="opq:48", train_centroids=True)])
def test_parts_sum_to_the_totals(kwargs):
    plan = plan_memory(**{**MSMARCO, **kwargs})
    for place in PLACES:
        assert plan.totals[place] == sum(p.bytes for p in plan.parts if p.where == place)
    assert sum(plan.totals.values()) == sum(p.bytes for p in plan.parts)
    assert plan.host_ram == plan.totals["host"] + plan.totals["pinned host"]
    assert all(p.where in PLACES and p.bytes >= 0 for p in plan.parts)


@pytest.mark.parametrize("index,first_pass", [("flat", None), ("flat", "int8"), ("flat", "bf16"), ("pq:16", None)])
def test_monotonic_in_docs_and_batch(index, first_pass):
    def total(**kw):  # one placement (no GPU), so the sums are comparable
        plan = plan_memory(**{**dict(docs=100_000, dim=256, model_params="22.7M", gpu_memory=0, host_memory="1TB",
                                     index=index, first_pass=first_pass), **kw})
        return sum(p.bytes for p in plan.parts)

    assert total(docs=100_000) < total(docs=200_000) < total(docs=1_000_000)
    assert total(batch_size=8) < total(batch_size=32) < total(batch_size=128)
    assert total(k=100) < total(k=1000)


def test_msmarco_flat_with_int8_first_pass_fits_an_11gb_gpu_with_exact_rows_on_the_host():
    plan = plan_memory(**MSMARCO, index="flat", first_pass="int8")
    assert plan.fits
    assert plan.placement["encoder"] == "gpu" and plan.placement["index"] == "host"
    assert plan.placement["exact_rows"] == "memory-mapped file" and plan.placement["search"] == "cpu"
    rows = part(plan, "exact rows")
    assert rows.bytes == 8_841_823 * 768 * 2 and rows.where == "memory-mapped file"
    assert part(plan, "first-pass copy").where == "host"
    assert part(plan, "AdamW state").where == "gpu" and part(plan, "pinned staging").where == "pinned host"
    assert "memory-mapped" in plan.table() and "verdict: FITS" in plan.table()


def test_msmarco_flat_without_first_pass_does_not_fit_on_the_gpu_and_goes_to_the_host():
    plan = plan_memory(**MSMARCO, index="flat")
    assert plan.placement["index"] == "host" and plan.placement["exact_rows"] == "host"
    gpu_only_rows = 8_841_823 * 768 * 2
    assert gpu_only_rows > plan.usable["gpu"]  # the rows alone exceed the 11 GB GPU
    assert plan.fits  # 13.6 GB of rows in 24 GB of RAM
    assert part(plan, "exact rows").where == "host"
    # With only 12 GB of RAM nothing fits, and the plan says so.
    small = plan_memory(**{**MSMARCO, "host_memory": "12GB"}, index="flat")
    assert not small.fits and not small.fits_where["host"] and "DOES NOT FIT" in small.table()


def test_msmarco_pq96_fits_entirely_on_the_gpu():
    plan = plan_memory(**MSMARCO, index="pq:96")
    assert plan.fits and plan.placement["name"] == "gpu" and plan.placement["search"] == "gpu"
    assert part(plan, "PQ codes").bytes == 8_841_823 * 96 and part(plan, "PQ codes").where == "gpu"
    assert plan.totals["pinned host"] == 0 and plan.totals["memory-mapped file"] == 0


def test_no_gpu_puts_everything_on_the_host():
    plan = plan_memory(docs=1000, dim=64, model_params="22.7M", gpu_memory=0, host_memory="8GiB")
    assert plan.capacity["gpu"] is None and plan.totals["gpu"] == 0
    assert plan.placement["name"] == "host" and plan.fits


def test_first_pass_bytes_are_those_of_a_built_copy(rng):
    for d in (5, 64, 100, 768):
        emb = rng.standard_normal((37, d)).astype(np.float32)
        for kind in ("int8", "bf16"):
            built = build_first_pass(emb, kind, refine=True)
            assert mp.first_pass_bytes(37, d, kind) == built.nbytes, (d, kind)
        assert mp.first_pass_bytes(37, d, "int8", refine=False) == build_first_pass(emb, "int8", refine=False).nbytes
    index = drfast.FlatIndex(rng.standard_normal((50, 96)).astype(np.float16), first_pass="int8")
    plan = plan_memory(docs=50, dim=96, first_pass="int8", model_params="1M", k=10, gpu_memory=0, host_memory="1GB")
    assert part(plan, "first-pass copy").bytes == index.first_pass_bytes
    assert part(plan, "exact rows").bytes == index.emb.nbytes
    for spec in ("int8", "int8-lean"):  # "int8-lean": the copy without its refinement codes
        index = drfast.FlatIndex(rng.standard_normal((50, 96)).astype(np.float16), first_pass=spec)
        plan = plan_memory(docs=50, dim=96, first_pass=spec, model_params="1M", k=10, gpu_memory=0, host_memory="1GB")
        assert part(plan, "first-pass copy").bytes == index.first_pass_bytes


@pytest.mark.parametrize("opq", [False, True])
def test_pq_bytes_are_those_of_a_real_index(rng, opq):
    m, d, n = 8, 32, 500
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32) if opq else None
    index = drfast.PQIndex(rng.standard_normal((m, 256, d // m)).astype(np.float32),
                           rng.integers(0, 256, (n, m)).astype(np.uint8), rotation)
    sizes = mp.pq_bytes(n, d, m, opq)
    assert sizes["codes"] == index.codes.nbytes
    assert sizes["centroids"] == index.centroids.numel() * index.centroids.element_size()
    if opq:
        assert sizes["rotation"] == index.rotation.numel() * index.rotation.element_size()
    plan = plan_memory(docs=n, dim=d, index=f"{'opq' if opq else 'pq'}:{m}", model_params="1M", gpu_memory=0,
                       host_memory="1GB")
    assert part(plan, "PQ codes").bytes == index.codes.nbytes


def test_doc_id_bytes_are_those_of_a_doc_id_map():
    ids = [f"doc{i:05d}" for i in range(1000)]  # 8 bytes each
    assert mp.doc_id_bytes_of(1000, 8) == DocIdMap(ids).nbytes


def test_model_shapes(tmp_path):
    from tiny import make_tiny_hf_folder
    from transformers import AutoModel

    folder = make_tiny_hf_folder(tmp_path / "m")
    shape = mp.model_shape(folder)
    assert shape.params == sum(p.numel() for p in AutoModel.from_pretrained(folder).parameters())
    assert (shape.hidden, shape.layers) == (32, 2)
    assert abs(mp.model_shape("roberta-base").params - 125e6) < 1e6
    assert abs(mp.model_shape("bert-base-uncased").params - 110e6) < 1e6
    minilm = mp.model_shape("sentence-transformers/all-MiniLM-L6-v2")
    assert minilm.params == 22_713_216 and (minilm.hidden, minilm.layers) == (384, 6)
    by_count = mp.model_shape(model_params="125M")
    assert by_count.params == 125_000_000 and by_count.hidden == 768
    with pytest.raises(ValueError, match="^model: "):
        mp.model_shape("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError, match="^model: "):
        mp.model_shape("roberta-base", "125M")


def test_activations_grow_with_batch_and_tokens_and_halve_with_amp():
    shape = mp.model_shape("roberta-base")
    a = mp.activation_bytes(shape, 32, 32)
    assert mp.activation_bytes(shape, 64, 32) == pytest.approx(2 * a, rel=1e-9)
    assert mp.activation_bytes(shape, 32, 64) > 2 * a  # the attention term grows with s^2
    assert mp.activation_bytes(shape, 32, 32, "bf16") == pytest.approx(a / 2, rel=1e-9)


def test_sizes_and_counts():
    assert parse_size("11GB") == 11 * 10**9 and parse_size("11GiB") == 11 * 2**30
    assert parse_size("500MB") == 500 * 10**6 and parse_size("4096") == 4096 and parse_size(12) == 12
    assert parse_size(" 1.5 TB ") == 1_500_000_000_000
    assert parse_count("125M") == 125_000_000 and parse_count("1.3B") == 1_300_000_000
    assert format_bytes(13_581_040_128) == "13.58 GB"
    for bad in ("11XB", "", "GB", "-1GB", "1e9"):
        with pytest.raises(ValueError, match="^gpu_memory: "):
            parse_size(bad, "gpu_memory")
    with pytest.raises(TypeError, match="^gpu_memory: "):
        parse_size([11], "gpu_memory")


@pytest.mark.parametrize("bad", [dict(docs=0), dict(k=10**9), dict(first_pass="int8", index="pq:8"),
                                 dict(index="pq:7"), dict(train_centroids=True), dict(dtype="int8"),
                                 dict(host_memory="0")])
def test_bad_arguments_name_themselves(bad):
    kwargs = {**dict(docs=1000, dim=64, model_params="1M", gpu_memory=0, host_memory="1GB"), **bad}
    name = next(iter(bad)) if "first_pass" not in bad else "first_pass"
    with pytest.raises(ValueError, match=f"^{name}: "):
        plan_memory(**kwargs)


def test_cli_json_agrees_with_plan_memory(capsys):
    argv = ["plan", "--docs", "8841823", "--dim", "768", "--model-params", "125M", "--index", "flat",
            "--first-pass", "int8", "--gpu-memory", "11GB", "--host-memory", "24GB", "--batch-size", "32", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    plan = plan_memory(docs=8841823, dim=768, model_params="125M", index="flat", first_pass="int8",
                       gpu_memory="11GB", host_memory="24GB", batch_size=32)
    assert out["fits"] is True and out == json.loads(plan.to_json())
    assert {p["name"]: p["bytes"] for p in out["parts"]} == {p.name: p.bytes for p in plan.parts}
    assert main(argv[:-1]) == 0
    assert "verdict: FITS" in capsys.readouterr().out
    # not fitting: the JSON says so and the exit status is 1
    assert main(argv[:-3] + ["--host-memory", "2GB", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["fits"] is False


@pytest.mark.parametrize("flags,flag", [(["--gpu-memory", "11XB"], "--gpu-memory"),
                                        (["--host-memory", "lots"], "--host-memory"),
                                        (["--gpu-memory", "-11GB"], "--gpu-memory"),  # not "expected one argument"
                                        (["--model-params", "big"], "--model-params"),
                                        (["--index", "pq:7"], "--index"),
                                        (["--model-params", "125M", "--model", "roberta-base"], "--model")])
def test_cli_bad_values_name_the_flag(capsys, flags, flag):
    argv = ["plan", "--docs", "1000", "--dim", "768"] + flags
    if "--model-params" not in flags:
        argv += ["--model-params", "125M"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drfast plan: error: {flag}: ") and "Traceback" not in err


def test_adore_plan_refuses_what_does_not_fit_unless_ignored():
    huge = PlannedRun.of_adore(AdoreConfig(), docs=10**12, dim=768, model="roberta-base")
    assert (huge.batch_size, huge.k, huge.amp) == (AdoreConfig().batch_size, AdoreConfig().k, AdoreConfig().amp)
    with pytest.raises(ValueError, match="^memory plan: the run does not fit"):
        mp.plan_adore_run(huge, device="cpu")
    plan = mp.plan_adore_run(huge, device="cpu", ignore_plan=True)
    assert not plan.fits and plan.placement["name"] == "host"
    assert "DOES NOT FIT" in plan.table()
    unknown = PlannedRun.of_adore(AdoreConfig(), docs=10, dim=8, model="no/such-model-xyz")
    assert mp.plan_adore_run(unknown, device="cpu") is None


def test_adore_writes_the_plan_into_metrics(tmp_path, caplog):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    from drfast.pipelines.adore import run_adore
    from drfast.pipelines.specs import CorpusSpec, EncoderSpec, OutputSpec, PlacementSpec

    model = make_tiny_hf_folder(tmp_path / "model")
    data = make_tiny_beir(tmp_path / "beir", np.random.default_rng(0), n_docs=80)
    caplog.set_level("INFO", logger="drfast")
    report = run_adore(CorpusSpec(data, cache=tmp_path / "cache"), EncoderSpec(model), OutputSpec(tmp_path / "out"),
                       config=AdoreConfig(epochs=1, k=20, batch_size=4), placement=PlacementSpec(device="cpu"))
    plan = report["memory_plan"]
    assert plan["fits"] is True and plan["placement"]["name"] == "host"
    assert any(p["name"].startswith("exact rows") and p["bytes"] == 80 * 32 * 2 for p in plan["parts"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["memory_plan"] == plan
    assert "verdict: FITS" in caplog.text  # the plan is logged before the model is loaded


def test_to_device_is_a_no_op_on_the_same_device_and_keeps_grad():
    t = torch.ones(3, requires_grad=True)
    assert to_device(t, torch.device("cpu")) is t
    assert to_device(torch.arange(3), torch.device("meta")).device.type == "meta"


def test_step_searches_on_the_index_device_and_returns_to_the_queries(rng, monkeypatch):
    # The index is asked to search queries on its own device, whatever the queries' device.
    docs = rng.standard_normal((200, 16)).astype(np.float32)
    index = drfast.FlatIndex(docs)
    seen = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda q, **kw: seen.append(q.device) or search(q, **kw))
    q = torch.tensor(rng.standard_normal((4, 16)), dtype=torch.float32, requires_grad=True)
    loss, _ = adore_batch_loss(q, index, [[1], [2], [3, 4], [5]], k=20)
    loss.backward()
    assert seen == [torch.device("cpu")] and q.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_mixed_placement_index_on_host_encoder_on_gpu(rng, kind):
    docs = rng.standard_normal((3000, 32)).astype(np.float32)
    index = drfast.FlatIndex(docs) if kind == "flat" else drfast.PQIndex.train(docs, m=8, seed=0)
    positives = [[1], [2, 3], [4], [5]]
    q_np = rng.standard_normal((4, 32)).astype(np.float32)
    q_cpu = torch.tensor(q_np, requires_grad=True)
    q_gpu = torch.tensor(q_np, device="cuda", requires_grad=True)
    loss_cpu, info_cpu = adore_batch_loss(q_cpu, index, positives, k=50)
    loss_gpu, info_gpu = adore_batch_loss(q_gpu, index, positives, k=50)  # index stays on the CPU
    loss_cpu.backward()
    loss_gpu.backward()
    assert loss_gpu.device.type == "cuda" and index.device.type == "cpu"
    assert info_gpu["mrr10"] == info_cpu["mrr10"]
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_gpu.grad.cpu(), q_cpu.grad, rtol=1e-4, atol=1e-6)


# ---- the first pass on the GPU, the exact rows on the host ("gpu-first-pass"), and first_pass="auto" ----
MSMARCO_ROBERTA = dict(docs=8_841_823, dim=768, model="roberta-base", batch_size=32, index="flat",
                       host_memory="64GB")
ENCODER_ON_GPU = ("query encoder weights", "gradients", "AdamW state", "activations", "CUDA context")


@pytest.mark.parametrize("spec", ["int8-lean", "auto"])
def test_msmarco_roberta_base_runs_its_first_pass_on_an_11gib_gpu(spec):
    plan = plan_memory(**MSMARCO_ROBERTA, first_pass=spec, gpu_memory="11GiB")
    assert plan.fits and plan.placement["name"] == "gpu-first-pass"
    assert plan.placement["first_pass"] == "gpu" and plan.placement["exact_rows"] == "memory-mapped file"
    assert plan.placement["first_pass_spec"] == "int8-lean"  # "auto": the full int8 copy (13.9 GB) cannot fit
    copy = part(plan, "first-pass copy")
    assert copy.where == "gpu" and copy.bytes == 8_841_823 * (768 + 16)  # codes + 3 float32 stats + int32 sum
    assert part(plan, "exact rows").where == "memory-mapped file"
    buffers = part(plan, "placed search buffers")
    assert buffers.where == "gpu"
    assert buffers.bytes == mp.placed_search_bytes(32, 32, 200, 8_841_823, 768, "int8", False)
    encoder = sum(part(plan, name).bytes for name in ENCODER_ON_GPU)
    on_gpu = [copy, buffers, part(plan, "search results on the GPU"), part(plan, "rows, ids and weights on the GPU")]
    assert plan.totals["gpu"] == encoder + sum(p.bytes for p in on_gpu)
    assert plan.totals["host"] < 2e9 and plan.rows_cached  # 13.6 GB of rows stay cached in 64 GB
    assert "first pass and bounds on the GPU" in plan.table()


def test_msmarco_on_11gb_falls_back_to_mixed_and_says_what_the_first_pass_on_the_gpu_needs():
    placed = plan_memory(**MSMARCO_ROBERTA, first_pass="int8-lean", gpu_memory="11GiB")
    plan = plan_memory(**MSMARCO_ROBERTA, first_pass="int8-lean", gpu_memory="11GB")
    assert placed.totals["gpu"] > plan.usable["gpu"]  # 10.86 GB > 10.45 GB usable of 11 GB
    assert plan.fits and plan.placement["name"] == "mixed"
    note = next(n for n in plan.notes if n.startswith("gpu-first-pass"))
    assert format_bytes(placed.totals["gpu"]) in note and format_bytes(plan.usable["gpu"]) in note
    smaller = plan_memory(**{**MSMARCO_ROBERTA, "batch_size": 16}, first_pass="int8-lean", gpu_memory="11GB")
    assert smaller.fits and smaller.placement["name"] == "gpu-first-pass"
    assert not any(n.startswith("gpu-first-pass") for n in smaller.notes)


def test_full_int8_copy_goes_to_the_gpu_when_it_fits_and_all_on_the_gpu_is_tried_first(monkeypatch):
    monkeypatch.setattr(mp, "resolve_auto", lambda: "int8")  # else "gpu" would run the exact scan there
    for spec in ("int8", "auto"):  # 24 GB: rows + copy (27.5 GB) do not fit, the copy alone (13.9 GB) does
        plan = plan_memory(**MSMARCO_ROBERTA, first_pass=spec, gpu_memory="24GB")
        assert plan.placement["name"] == "gpu-first-pass" and plan.placement["first_pass_spec"] == "int8"
        assert part(plan, "first-pass copy").bytes == mp.first_pass_bytes(8_841_823, 768, "int8", True)
    everything = plan_memory(**MSMARCO_ROBERTA, first_pass="int8-lean", gpu_memory="40GB")
    assert everything.placement["name"] == "gpu" and part(everything, "exact rows").where == "gpu"


def test_placed_first_pass_bytes_are_those_of_a_placed_copy(rng):
    for spec in ("int8", "int8-lean", "bf16"):
        index = drfast.FlatIndex(rng.standard_normal((50, 96)).astype(np.float16), first_pass=spec,
                                 first_pass_device="cpu")
        assert isinstance(index.first_pass_data.codes, torch.Tensor)  # the placed copy: tensors on the device
        kind = "bf16" if spec == "bf16" else "int8"
        assert mp.first_pass_bytes(50, 96, kind, spec == "int8") == index.first_pass_bytes, spec


class LiveBytes(TorchDispatchMode):
    """The peak bytes of the CPU storages torch ops create while active (a storage is freed when the
    last tensor made by an op on it dies)."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self.live = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.untyped_storage().data_ptr() == 0:
                continue
            key = t.untyped_storage().data_ptr()
            if key not in self.live:
                self.live[key] = [t.untyped_storage().nbytes(), 0]
                self.now += self.live[key][0]
                self.peak = max(self.peak, self.now)
            self.live[key][1] += 1
            weakref.finalize(t, self._drop, key)
        return out

    def _drop(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]


@pytest.mark.parametrize("spec", ["int8-lean", "int8"])
def test_placed_search_bytes_bound_what_the_placed_search_allocates(rng, spec):
    # The same torch ops run on the CPU as on a GPU: what they allocate per chunk is what the plan sizes.
    N, d, B, k, chunk = 10_001, 128, 32, 200, 2048
    index = drfast.FlatIndex(rng.standard_normal((N, d)).astype(np.float16), first_pass=spec, first_pass_device="cpu")
    queries = rng.standard_normal((B, d)).astype(np.float32)
    positives = [[int(r)] for r in rng.integers(0, N, B)]
    with LiveBytes() as live:
        index.search(queries, k=k, positives=positives, cutoff=10, chunk_rows=chunk, backend="torch")
    planned = mp.placed_search_bytes(B, B, k, N, d, "int8", spec == "int8", chunk)
    assert live.peak <= planned, (live.peak, planned)
    if spec == "int8-lean":  # (with refinement codes the plan holds a full batch of refined pairs, a bound)
        assert planned <= 2 * live.peak, (live.peak, planned)


@pytest.mark.gpu
def test_placed_search_bytes_bound_the_gpu_peak(rng):
    N, d, B, k = 600_001, 128, 32, 200
    index = drfast.FlatIndex(rng.standard_normal((N, d)).astype(np.float16), first_pass="int8-lean",
                             first_pass_device="cuda")
    queries = rng.standard_normal((B, d)).astype(np.float32)
    positives = [[int(r)] for r in rng.integers(0, N, B)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    index.search(queries, k=k, positives=positives, cutoff=10)
    peak = torch.cuda.max_memory_allocated() - base
    small = 1 << 20  # the batch's own tensors (queries and their codes, positives, results): under 1 MB here
    assert peak <= mp.placed_search_bytes(B, B, k, N, d, "int8", False) + small, peak


def test_amp_keeps_16_bit_copies_of_the_weights():
    fp32 = plan_memory(**MSMARCO_ROBERTA, first_pass="int8-lean", gpu_memory="11GiB")
    bf16 = plan_memory(**MSMARCO_ROBERTA, first_pass="int8-lean", gpu_memory="11GiB", amp="bf16")
    assert part(bf16, "16-bit copies of the weights").bytes == 2 * fp32.inputs["params"]
    assert not any(p.name.startswith("16-bit") for p in fp32.parts)


def test_auto_drops_the_refinement_codes_when_the_rows_would_not_stay_cached(monkeypatch):
    monkeypatch.setattr(mp, "resolve_auto", lambda: "int8")  # a CPU with AVX-512 VNNI
    run = dict(docs=8_841_823, dim=768, model_params="22.7M", index="flat", first_pass="auto")
    for gpu in (0, "6GB"):  # the search on the CPU: host, or mixed (the GPU too small for the first pass)
        small = plan_memory(**run, gpu_memory=gpu, host_memory="24GB")
        assert small.placement["first_pass_spec"] == "int8-lean" and small.rows_cached, gpu
        assert small.placement["name"] in ("host", "mixed") and small.placement["first_pass"] == "host"
        large = plan_memory(**run, gpu_memory=gpu, host_memory="64GB")
        assert large.placement["first_pass_spec"] == "int8" and large.rows_cached
    # int8 with its refinement codes asked for explicitly on 24 GB: it fits, but the plan warns
    explicit = plan_memory(**{**run, "first_pass": "int8"}, gpu_memory=0, host_memory="24GB")
    assert explicit.fits and not explicit.rows_cached and not explicit.to_dict()["rows_cached"]
    warning = next(n for n in explicit.notes if n.startswith("warning: the memory-mapped exact rows"))
    assert "8.9 s" in warning and "1.93 s" in warning and "3.0 s" in warning
    assert "note: warning: the memory-mapped" in explicit.table()


def test_resolve_auto_spec_sizes_the_copy_against_the_memory(monkeypatch):
    N, d, rows = 8_841_823, 768, 8_841_823 * 768 * 2
    assert fp_mod.resolve_auto_spec(N, d, rows, "cuda", memory=parse_size("11GB")) == "int8-lean"
    assert fp_mod.resolve_auto_spec(N, d, rows, "cuda", memory=parse_size("24GB")) == "int8"  # 13.9 GB copy
    monkeypatch.setattr(fp_mod, "resolve_auto", lambda: "int8")
    assert fp_mod.resolve_auto_spec(N, d, rows, memory=parse_size("24GB")) == "int8-lean"  # 13.6 + 13.9 GB
    assert fp_mod.resolve_auto_spec(N, d, 0, memory=parse_size("24GB")) == "int8"  # rows already in RAM
    monkeypatch.setattr(fp_mod, "resolve_auto", lambda: None)
    assert fp_mod.resolve_auto_spec(N, d, rows, memory=parse_size("24GB")) is None


def test_flat_index_auto_counts_memory_mapped_rows_in_the_page_cache(tmp_path, rng, monkeypatch):
    emb = rng.standard_normal((1000, 64)).astype(np.float16)  # rows 128 kB, full int8 copy 168 kB
    np.save(tmp_path / "emb.npy", emb)
    mapped = np.load(tmp_path / "emb.npy", mmap_mode="r")
    monkeypatch.setattr(fp_mod, "resolve_auto", lambda: "int8")
    monkeypatch.setattr(fp_mod, "detect_host_memory", lambda: 250_000)  # 237.5 kB usable
    assert not drfast.FlatIndex(mapped, first_pass="auto").first_pass_data.refine  # 128 + 168 kB > usable
    assert drfast.FlatIndex(emb, first_pass="auto").first_pass_data.refine  # 168 kB <= usable
    monkeypatch.setattr(fp_mod, "detect_host_memory", lambda: 10**9)
    assert drfast.FlatIndex(mapped, first_pass="auto").first_pass_data.refine


def test_place_for_plan_moves_only_the_first_pass_for_gpu_first_pass(rng):
    emb = rng.standard_normal((3000, 32)).astype(np.float16)
    index = drfast.FlatIndex(emb, first_pass="int8-lean")
    placed = mp.place_for_plan(index, "cpu", types.SimpleNamespace(placement={"name": "gpu-first-pass"}))
    assert placed.emb is index.emb and placed.first_pass_rows_print == index.first_pass_rows_print
    assert isinstance(placed.first_pass_data.codes, torch.Tensor) and not placed.first_pass_data.refine
    q = rng.standard_normal((4, 32)).astype(np.float32)
    want, got = (i.search(q, k=20, positives=[[1], [2, 3], [4], [5]], cutoff=10) for i in (index, placed))
    for name in ("ids", "scores", "pos_ranks", "pair_weights"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("mixed", "host"):
        assert mp.place_for_plan(index, "cpu", types.SimpleNamespace(placement={"name": name})) is index
    moved = mp.place_for_plan(index, "cpu", None)  # no plan: all of it on the encoder's device
    assert moved is not index and moved.device == torch.device("cpu")
    no_copy = drfast.FlatIndex(emb)
    assert mp.place_for_plan(no_copy, "cpu", types.SimpleNamespace(placement={"name": "gpu-first-pass"})) is no_copy


def test_adore_builds_auto_as_the_plan_resolved_it():
    placed = plan_memory(**MSMARCO_ROBERTA, first_pass="auto", gpu_memory="11GiB")
    assert mp.planned_first_pass("auto", placed) == "int8-lean"
    assert mp.planned_first_pass("int8", placed) == "int8" and mp.planned_first_pass("auto", None) == "auto"
    no_gpu = plan_memory(**MSMARCO_ROBERTA, first_pass="auto", gpu_memory=0)
    assert mp.planned_first_pass("auto", no_gpu) == (no_gpu.placement["first_pass_spec"] or "none")


@pytest.mark.parametrize("spec", ["int8-lean", "auto"])
def test_cli_plan_puts_the_first_pass_on_the_gpu(capsys, spec):
    argv = ["plan", "--docs", "8841823", "--dim", "768", "--model", "roberta-base", "--index", "flat",
            "--first-pass", spec, "--gpu-memory", "11GiB", "--host-memory", "64GB", "--batch-size", "32", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["placement"]["name"] == "gpu-first-pass" and out["placement"]["first_pass_spec"] == "int8-lean"
    plan = plan_memory(**MSMARCO_ROBERTA, first_pass=spec, gpu_memory="11GiB")
    assert out == json.loads(plan.to_json())


def test_adore_builds_its_index_with_the_first_pass_the_plan_resolved(tmp_path, monkeypatch):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    from drfast.pipelines.adore import run_adore
    from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, PlacementSpec

    monkeypatch.setattr(mp, "resolve_auto", lambda: "int8")  # the plan's "auto" as on a VNNI CPU
    monkeypatch.setattr(fp_mod, "resolve_auto", lambda: None)  # FlatIndex's own "auto" would build none
    model = make_tiny_hf_folder(tmp_path / "model")
    data = make_tiny_beir(tmp_path / "beir", np.random.default_rng(0), n_docs=80)
    report = run_adore(CorpusSpec(data, cache=tmp_path / "cache"), EncoderSpec(model), OutputSpec(tmp_path / "out"),
                       IndexSpec(first_pass="auto"), config=AdoreConfig(epochs=1, k=20, batch_size=4),
                       placement=PlacementSpec(device="cpu"))
    assert report["memory_plan"]["placement"]["first_pass_spec"] == "int8"
    assert report["config"]["first_pass"] == "int8"
