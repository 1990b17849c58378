"""Calibrates drfast.pipelines.memory_plan.activation_bytes against a measurement on the CPU.

    python -m benchmarks.scripts.calibrate_activations [--model all-MiniLM-L6-v2] [--seq 32]

For each batch size, a fresh spawned process loads the model (fp32, train mode), runs two tiny
AdamW steps (gradients and optimizer state allocated, kept with zero_grad(set_to_none=False)), resets
VmHWM and runs one forward + backward + step on B x seq random tokens: the peak RSS growth is the
activation memory (plus the backward's temporaries). Prints it against the formula without its
calibration constant (ACTIVATION_CALIBRATION is their ratio).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _measure(path: str, batch: int, seq: int, out) -> None:
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(path).float()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(b: int, s: int) -> None:
        ids = torch.randint(1000, 2000, (b, s))
        cls = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]
        cls.pow(2).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step(1, 2)
    step(1, 2)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    step(batch, seq)
    out.put((_status_kb("VmHWM") - before) * 1024)


def main() -> None:
    from drfast.encode.encoders import resolve_model
    from drfast.pipelines import memory_plan as mp_plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="*", default=[32, 64, 128])
    args = ap.parse_args()
    path = resolve_model(args.model)
    shape = mp_plan.model_shape(path)
    ctx = mp.get_context("spawn")
    print(f"{args.model}: {shape}")
    print("| B | seq | measured MB | formula MB (uncalibrated) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for b in args.batches:
        q = ctx.Queue()
        p = ctx.Process(target=_measure, args=(path, b, args.seq, q))
        p.start()
        measured = q.get()
        p.join()
        formula = mp_plan.activation_bytes(shape, b, args.seq) / mp_plan.ACTIVATION_CALIBRATION
        print(f"| {b} | {args.seq} | {measured / 1e6:.1f} | {formula / 1e6:.1f} | {measured / formula:.2f} |")


if __name__ == "__main__":
    main()
