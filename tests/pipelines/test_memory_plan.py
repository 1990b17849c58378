"""The memory planner: parts and totals, placements at MS MARCO scale, the sizes of the real data
structures (so the planner cannot drift from the code), `drfast plan`, ADORE's use of the plan and
the mixed placement of its step (index on the host, queries on another device)."""
import json

import numpy as np
import pytest
import torch

import drfast
from drfast.cli import main
from drfast.common.doc_ids import DocIdMap
from drfast.common.sizes import format_bytes, parse_count, parse_size
from drfast.pipelines import memory_plan as mp
from drfast.pipelines.memory_plan import PLACES, plan_memory
from drfast.search.two_stage import build_first_pass
from drfast.train.adore import AdoreConfig, adore_batch_loss, to_device

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


def test_adore_plan_refuses_what_does_not_fit_unless_ignored(capsys):
    config = AdoreConfig()
    with pytest.raises(ValueError, match="^memory plan: the run does not fit"):
        mp.plan_adore_run(docs=10**12, dim=768, index="flat", first_pass=None, model="roberta-base", config=config,
                          device="cpu")
    plan = mp.plan_adore_run(docs=10**12, dim=768, index="flat", first_pass=None, model="roberta-base",
                             config=config, device="cpu", ignore_plan=True)
    assert not plan.fits and plan.placement["name"] == "host"
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert mp.plan_adore_run(docs=10, dim=8, index="flat", first_pass=None, model="no/such-model-xyz",
                             config=config, device="cpu") is None


def test_adore_writes_the_plan_into_metrics(tmp_path, capsys):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    from drfast.pipelines.adore import run_adore

    model = make_tiny_hf_folder(tmp_path / "model")
    data = make_tiny_beir(tmp_path / "beir", np.random.default_rng(0), n_docs=80)
    report = run_adore(data, model, tmp_path / "out", config=AdoreConfig(epochs=1, k=20, batch_size=4),
                       cache_dir=tmp_path / "cache", device="cpu")
    plan = report["memory_plan"]
    assert plan["fits"] is True and plan["placement"]["name"] == "host"
    assert any(p["name"].startswith("exact rows") and p["bytes"] == 80 * 32 * 2 for p in plan["parts"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["memory_plan"] == plan
    assert "verdict: FITS" in capsys.readouterr().out


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
