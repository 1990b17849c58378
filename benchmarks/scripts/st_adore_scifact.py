"""AdoreLoss through SentenceTransformerTrainer on SciFact (train -> test), with `drfast adore`'s defaults.

Run from the repository root:

    DRFAST_DATA=/path/to/data python -m benchmarks.scripts.st_adore_scifact [--data DIR] [--model M] [--cli]

The CLI's settings, mapped onto the trainer: lr 4e-5 (AdamW, weight decay 0.01, linear warm-up over 10 %
of the steps then linear decay), batch 32, 4 epochs, gradient norm clipped at 1.0, seed 0, k=200,
cutoff=10, score scale 20 (normalised MiniLM), a flat float16 index of the corpus (the CLI's default
--dtype), queries and documents at the model's max_seq_length. The reference is `drfast adore --data DIR
--model all-MiniLM-L6-v2 --index flat` (nDCG@10 0.7209 at seed 0, docs/reproductions/scifact-adore.md);
with --cli it is run here too, to compare step times on the same machine at the same moment. The corpus
vectors come from st_common's cache (encoded once by the model's encode_document).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scripts.st_common import cached_vectors, parser, scifact_pairs


def train_with_st(args, out: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    import drfast
    from drfast.encode.encoders import resolve_model
    from drfast.integrations.sentence_transformers import (ROUTER_MAPPING, AdoreLoss, InformationRetrievalEvaluator,
                                                           query_side)

    train, test = drfast.load_beir(args.data, "train"), drfast.load_beir(args.data, "test")
    ids, texts = zip(*iter(train.corpus))
    anchors, positives, corpus = scifact_pairs(args.data, "train")
    vectors = cached_vectors(args.model, anchors, corpus + positives, args.cache)
    index = drfast.FlatIndex(np.stack([vectors["document"][t] for t in texts]).astype(np.float16), doc_ids=ids)
    model = query_side(SentenceTransformer(resolve_model(args.model), device="cpu"))
    qids = sorted(train.positives)  # the CLI's training items
    positives_rows = [index.doc_ids.rows(train.positives[q]).tolist() for q in qids]
    loss = AdoreLoss(model, index, positives_rows)
    dataset = Dataset.from_dict({"query": [train.queries[q] for q in qids], "label": list(range(len(qids)))})
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st"), num_train_epochs=4, per_device_train_batch_size=32, learning_rate=4e-5,
        weight_decay=0.01, warmup_ratio=0.1, lr_scheduler_type="linear", max_grad_norm=1.0, seed=0,
        logging_steps=13, save_strategy="no", report_to="none", router_mapping=ROUTER_MAPPING, use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=dataset, loss=loss,
                                         callbacks=[loss.callback()])
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    evaluator = InformationRetrievalEvaluator(test.queries, dict(zip(ids, texts)),
                                              {q: set(d) for q, d in test.positives.items()}, index=index,
                                              name="scifact-test")
    metrics = evaluator(model)
    return {"nDCG@10": metrics["scifact-test_cosine_ndcg@10"], "MRR@10": metrics["scifact-test_cosine_mrr@10"],
            "steps": result.global_step, "train_s": seconds, "step_s": seconds / result.global_step,
            "log": [r for r in trainer.state.log_history if "loss" in r]}


def train_with_cli(args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "drfast", "adore", "--data", args.data, "--model", args.model, "--index", "flat",
           "--output", str(out / "cli")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    m = json.loads((out / "cli" / "metrics.json").read_text())
    return {"nDCG@10": m["after"]["nDCG@10"], "MRR@10": m["after"]["MRR@10"], "wall_s": seconds,
            "timings": m.get("timings")}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--cli", action="store_true", help="also run drfast adore here, for its step time")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        st = train_with_st(args, Path(tmp))
        print(json.dumps({k: v for k, v in st.items() if k != "log"}, indent=1))
        for r in st["log"]:
            print({k: r[k] for k in ("step", "loss", "mrr10", "pairs") if k in r})
        if args.cli:
            print(json.dumps(train_with_cli(args, Path(tmp)), indent=1, default=str))


if __name__ == "__main__":
    main()
