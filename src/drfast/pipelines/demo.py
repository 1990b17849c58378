"""`drfast demo`: ADORE on SciFact with all-MiniLM-L6-v2, before/after on a flat and a PQ index."""
from __future__ import annotations

import dataclasses
import logging
import os
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from drfast.common.errors import UsageError
from drfast.pipelines.adore import run_adore
from drfast.pipelines.inputs import check_index_spec, check_model
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, TrainSpec
from drfast.train.adore import AdoreConfig

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DATA_ENV = "DRFAST_DATA"  # a folder holding BEIR collections (scifact/, vaswani/, ...)
METRICS = ("nDCG@10", "MRR@10", "MRR@100", "R@100")


def find_scifact(data: Optional[str], cache_dir: Path) -> Path:
    """--data, else $DRFAST_DATA/scifact, else an earlier download under CACHE/datasets, else BEIR's download."""
    if data:
        return Path(data)
    candidates = [Path(os.environ[DATA_ENV]) / "scifact"] if os.environ.get(DATA_ENV) else []
    for candidate in candidates + [cache_dir / "datasets" / "scifact"]:
        if (candidate / "corpus.jsonl").is_file():
            return candidate
    return download_beir("scifact", cache_dir / "datasets")


def download_beir(name: str, folder: Path) -> Path:
    """BEIR's own zip of a collection, unpacked under `folder`; a UsageError naming --data when offline."""
    url = BEIR_URL.format(name=name)
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{name}.zip"
    logger.info("downloading %s ...", url)
    try:
        tmp = archive.with_suffix(".zip.part")
        urllib.request.urlretrieve(url, tmp)
        tmp.replace(archive)
    except OSError as e:
        raise UsageError("data", f"could not download {url} ({e}); pass a local BEIR folder with --data DIR (or "
                         f"set {DATA_ENV} to a folder holding {name}/)") from None
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    return folder / name


def run_demo(corpus: CorpusSpec, model: str, output: OutputSpec, *, pq: int = 48,
             config: Optional[AdoreConfig] = None, index_seed: int = 0) -> dict:
    """ADORE against a flat index (also evaluated on pq:`pq`), then against the pq:`pq` index, on the
    SciFact folder `corpus.data` (else found by find_scifact): {"flat": report, "pq:M": report}, each
    written to OUTPUT/flat and OUTPUT/pqM (see run_adore; format_demo gives the table)."""
    spec = f"pq:{pq}"
    check_index_spec(spec, check_model(model), name="pq")
    cache = corpus.embeddings_cache.parent  # CACHE: downloads go to CACHE/datasets
    corpus = dataclasses.replace(corpus, data=str(find_scifact(corpus.data, cache)))
    encoder, config = EncoderSpec(model=model), config or AdoreConfig()
    logger.info("data: %s\nmodel: %s", corpus.data, model)
    logger.info("1/2  ADORE against the flat index (also evaluated on the PQ index)")
    flat = run_adore(corpus, encoder, dataclasses.replace(output, output=str(Path(output.output) / "flat")),
                     IndexSpec(index_seed=index_seed), config=config, train=TrainSpec(also_evaluate_on=(spec,)))
    logger.info("2/2  ADORE against the %s index (end to end on the compressed index)", spec)
    pqr = run_adore(corpus, encoder, dataclasses.replace(output, output=str(Path(output.output) / f"pq{pq}")),
                    IndexSpec(index=spec, index_seed=index_seed), config=config)
    return {"flat": flat, spec: pqr}


def format_demo(result: dict, model: str, output: str) -> str:
    """The demo's table: zero-shot and ADORE-trained query encoders on the flat and the PQ index."""
    flat, spec = result["flat"], next(key for key in result if key != "flat")
    pqr = result[spec]
    rows = [("flat", "zero-shot", flat["before"]), ("flat", "ADORE trained on flat", flat["after"]),
            (spec, "zero-shot", pqr["before"]),
            (spec, "ADORE trained on flat", flat["other_indexes"][spec]["after"]),
            (spec, f"ADORE trained on {spec}", pqr["after"])]
    lines = [f"SciFact test split, {model}:", f"{'index':<8}{'query encoder':<28}" + "".join(f"{n:>10}" for n in METRICS)]
    lines += [f"{index:<8}{label:<28}" + "".join(f"{m[n]:>10.4f}" for n in METRICS) for index, label, m in rows]
    lines.append(f"\nruns, trained query encoders and metrics.json files in {output}/")
    return "\n".join(lines)
