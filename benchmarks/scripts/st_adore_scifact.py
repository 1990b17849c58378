"""AdoreLoss through SentenceTransformerTrainer on SciFact (train -> test), with `drfast adore`'s run.

Run from the repository root:

    DRFAST_DATA=/path/to/data python -m benchmarks.scripts.st_adore_scifact [--data DIR] [--model M] [--cli]
        [--timing-steps N]

The trainer is given drfast adore's run (drfast.integrations.st_training): its settings (lr 4e-5, AdamW
with weight decay 0.01 on every parameter, warm-up over int(10 % of the steps) from lr/11 then linear decay,
batch 32, 4 epochs, gradient norm clipped at 1.0, seed 0), its batches (DrfastBatchSampler) and its dropout
stream (DrfastRandomState); the loss has the CLI's k=200, cutoff=10, score scale 20 (normalised MiniLM); the
index is the CLI's: a flat float16 index of the corpus embeddings drfast adore caches (encoded by drfast's
document encoder, once). Queries go in at the model's max_seq_length, as the CLI's query_max_length.

--timing-steps N: before the full runs, the first N steps of both trainers (the same batches from the same
starting model) are run in one process, in two threads that take turns step by step, so that both step
times are measured under the same load (the machine this was written on is shared); each turn is the whole
loop iteration (fetching and collating the batch, logging, the step).
--cli: also run `drfast adore --data DIR --model M --index flat` (the reference: nDCG@10 0.7209 at seed 0,
docs/reproductions/scifact-adore.md), back to back with the trainer's run.
"""
from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.scripts.st_common import parser

logger = logging.getLogger(__name__)


def load_scifact(args):
    """(train, test, the CLI's flat float16 index over drfast adore's cached corpus embeddings)."""
    import drfast
    from drfast.encode.encoders import BiEncoder
    from drfast.pipelines.corpus import corpus_embeddings
    from drfast.pipelines.specs import CorpusSpec

    train, test = drfast.load_beir(args.data, "train"), drfast.load_beir(args.data, "test")
    emb, doc_ids = corpus_embeddings(CorpusSpec(data=args.data), BiEncoder.load(args.model).doc_encoder,
                                     documents=train.corpus)
    return train, test, drfast.FlatIndex(np.asarray(emb), doc_ids=doc_ids)


def st_trainer(args, train, index, out: Path, max_steps: int = 0, callbacks=()):
    """(SentenceTransformerTrainer, model) with drfast adore's run from the zero-shot model."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    import drfast
    from drfast.encode.encoders import resolve_model
    from drfast.integrations.sentence_transformers import (AdoreLoss, DrfastRandomState, adore_optimizers,
                                                           adore_training_arguments, query_side)

    config = drfast.AdoreConfig(max_steps=max_steps)  # drfast adore's defaults
    model = query_side(SentenceTransformer(resolve_model(args.model), device="cpu"))
    qids = sorted(train.positives)  # the CLI's training items, in its order
    loss = AdoreLoss(model, index, [index.doc_ids.rows(train.positives[q]).tolist() for q in qids], k=config.k,
                     cutoff=config.cutoff)
    dataset = Dataset.from_dict({"query": [train.queries[q] for q in qids], "label": list(range(len(qids)))})
    targs = adore_training_arguments(config, output_dir=str(out), logging_steps=13, save_strategy="no",
                                     report_to="none", use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=dataset, loss=loss,
                                         optimizers=adore_optimizers(loss, len(qids), config),
                                         callbacks=[loss.callback(), DrfastRandomState(), *callbacks])
    return trainer, model


def train_with_st(args, train, test, index, out: Path) -> dict:
    from drfast.integrations.sentence_transformers import InformationRetrievalEvaluator

    trainer, model = st_trainer(args, train, index, out)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    ids, texts = zip(*iter(train.corpus))
    evaluator = InformationRetrievalEvaluator(test.queries, dict(zip(ids, texts)),
                                              {q: set(d) for q, d in test.positives.items()}, index=index,
                                              name="scifact-test")
    metrics = evaluator(model)
    return {"nDCG@10": metrics["scifact-test_cosine_ndcg@10"], "MRR@10": metrics["scifact-test_cosine_mrr@10"],
            "steps": result.global_step, "train_s": seconds, "s_per_step": seconds / result.global_step,
            "log": [r for r in trainer.state.log_history if "loss" in r]}


def train_with_cli(args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "drfast", "adore", "--data", args.data, "--model", args.model, "--index", "flat",
           "--output", str(out)]
    subprocess.run(cmd, check=True)
    m = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step_s" in r]
    return {"nDCG@10": m["after"]["nDCG@10"], "MRR@10": m["after"]["MRR@10"], "steps": len(steps),
            "train_s": m["timings"]["train_s"], "s_per_step": m["timings"]["train_s"] / len(steps),
            "mean_logged_step_s": statistics.fmean(r["step_s"] for r in steps),
            "loss": {r["step"]: r["loss"] for r in steps}}


def same_windows(st_log, cli_loss: dict) -> list:
    """(step, the trainer's logged loss, drfast adore's mean loss over the same steps) per trainer log line."""
    rows, last = [], 0
    for r in st_log:
        rows.append((r["step"], r["loss"], statistics.fmean(cli_loss[s] for s in range(last + 1, r["step"] + 1))))
        last = r["step"]
    return rows


class Turnstile:
    """Two trainers in two threads take turns, one optimizer step each; a side's step time is the wall time
    of its turn. A side that has finished no longer holds the other up."""

    def __init__(self, first: str, second: str):
        self.cond = threading.Condition()
        self.sides, self.turn, self.done = (first, second), first, set()
        self.times = {first: [], second: []}
        self._t0 = 0.0

    def begin(self, side: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == side or self._other(side) in self.done)
        self._t0 = time.perf_counter()

    def end(self, side: str, last: bool = False) -> None:
        self.times[side].append(time.perf_counter() - self._t0)
        with self.cond:
            self.turn = self._other(side)
            if last:
                self.done.add(side)
            self.cond.notify_all()

    def finish(self, side: str) -> None:
        """`side` takes no more turns (also when it failed: the other side is not left waiting)."""
        with self.cond:
            self.done.add(side)
            self.cond.notify_all()

    def _other(self, side: str) -> str:
        return self.sides[1] if side == self.sides[0] else self.sides[0]


def interleaved_step_times(args, train, index, steps: int, out: Path) -> dict:
    """The first `steps` steps of the trainer (AdoreLoss) and of drfast adore's AdoreTrainer, taking turns."""
    from transformers import TrainerCallback

    import drfast
    from drfast.encode.encoders import BiEncoder

    gate = Turnstile("st", "cli")

    class Turns(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            gate.begin("st")

        def on_step_end(self, args, state, control, **kwargs):
            last = state.global_step >= state.max_steps
            gate.end("st", last)
            if not last:
                gate.begin("st")

    def cli_turns(trainer, step):  # drfast's hooks run before the first step and after every step
        if step:
            gate.end("cli", step >= steps)
        if step < steps:
            gate.begin("cli")

    st, _ = st_trainer(args, train, index, out, max_steps=steps, callbacks=[Turns()])
    cli = drfast.AdoreTrainer(BiEncoder.load(args.model).query_encoder, index, queries=train.queries,
                              positives=train.positives, config=drfast.AdoreConfig(max_steps=steps),
                              hooks=[(1, cli_turns)])
    failed = []

    def run(side, train_fn):
        try:
            train_fn()
        except BaseException as e:  # re-raised below, in the main thread
            failed.append(e)
        finally:
            gate.finish(side)

    thread = threading.Thread(target=run, args=("st", st.train))
    thread.start()
    run("cli", cli.train)
    thread.join()
    if failed:
        raise failed[0]
    # the first two steps warm the allocator up; during the last one, the other side may be tearing down
    kept = {side: t[2:-1] for side, t in gate.times.items()}
    mean = {side: statistics.fmean(t) for side, t in kept.items()}
    return {"steps": steps, "st_mean_s": mean["st"], "cli_mean_s": mean["cli"],
            "st_median_s": statistics.median(kept["st"]), "cli_median_s": statistics.median(kept["cli"]),
            "st_over_cli": mean["st"] / mean["cli"],
            **{f"{side}_steps_s": " ".join(f"{t:.2f}" for t in times) for side, times in gate.times.items()}}


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (Linux), the machine's load while a part ran."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "n/a"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--cli", action="store_true", help="also run drfast adore, back to back")
    p.add_argument("--timing-steps", type=int, default=0, metavar="N",
                   help="first measure N steps of both trainers, taking turns in one process")
    args = p.parse_args()
    if 0 < args.timing_steps < 4:
        p.error("--timing-steps: at least 4 (the first two and the last step are left out of the means)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train, test, index = load_scifact(args)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.timing_steps:
            report["interleaved"] = dict(interleaved_step_times(args, train, index, args.timing_steps,
                                                                Path(tmp) / "timing"), loadavg=loadavg())
            logger.info("%s", json.dumps(report["interleaved"]))
        st = train_with_st(args, train, test, index, Path(tmp) / "st")
        report["st"] = dict({k: v for k, v in st.items() if k != "log"}, loadavg=loadavg())
        for r in st["log"]:
            logger.info("%s", {k: r[k] for k in ("step", "loss", "mrr10", "pairs", "learning_rate") if k in r})
        if args.cli:
            cli = train_with_cli(args, Path(tmp) / "cli")
            report["cli"] = dict({k: v for k, v in cli.items() if k != "loss"}, loadavg=loadavg())
            for step, st_loss, cli_loss in same_windows(st["log"], cli["loss"]):
                logger.info("step %3d  loss: trainer %.6f  drfast adore %.6f", step, st_loss, cli_loss)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
