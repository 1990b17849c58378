"""`drfast demo`: ADORE on SciFact with all-MiniLM-L6-v2, before/after on a flat and a PQ index."""
from __future__ import annotations

import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from drfast.encode.corpus_cache import DEFAULT_CACHE
from drfast.pipelines.adore import run_adore
from drfast.pipelines.inputs import check_index_spec, check_model
from drfast.train.adore import AdoreConfig

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def find_scifact(data: Optional[str], cache_dir: Path) -> Path:
    """--data, else ../shared/data/scifact beside the working directory, else BEIR's download."""
    if data:
        return Path(data)
    for candidate in (Path.cwd().parent / "shared" / "data" / "scifact", Path.cwd() / "shared" / "data" / "scifact",
                      cache_dir / "datasets" / "scifact"):
        if (candidate / "corpus.jsonl").is_file():
            return candidate
    return download_beir("scifact", cache_dir / "datasets")


def download_beir(name: str, folder: Path) -> Path:
    """BEIR's own zip of a collection, unpacked under `folder`; a clear error when offline."""
    url = BEIR_URL.format(name=name)
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{name}.zip"
    print(f"downloading {url} ...")
    try:
        tmp = archive.with_suffix(".zip.part")
        urllib.request.urlretrieve(url, tmp)
        tmp.replace(archive)
    except OSError as e:
        raise SystemExit(f"drfast demo: could not download {url} ({e}).\n"
                         f"Pass a local BEIR folder with --data DIR (for example ../shared/data/scifact).") from None
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    return folder / name


def run_demo(data: Optional[str] = None, model: str = "all-MiniLM-L6-v2", output: str = "drfast-demo", *,
             pq: int = 48, epochs: int = 4, seed: int = 0, cache_dir: Optional[str] = None,
             index_seed: int = 0, resume: bool = False, overwrite: bool = False) -> dict:
    spec = f"pq:{pq}"
    check_index_spec(spec, check_model(model), name="pq")
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    folder = find_scifact(data, cache_dir)
    config = AdoreConfig(epochs=epochs, seed=seed)
    print(f"data: {folder}\nmodel: {model}\n")
    print("1/2  ADORE against the flat index (also evaluated on the PQ index)")
    flat = run_adore(folder, model, Path(output) / "flat", index_spec="flat", config=config, cache_dir=cache_dir,
                     index_seed=index_seed, also_evaluate_on=[spec], resume=resume, overwrite=overwrite)
    print(f"2/2  ADORE against the {spec} index (end to end on the compressed index)")
    pqr = run_adore(folder, model, Path(output) / spec.replace(":", ""), index_spec=spec, config=config,
                    cache_dir=cache_dir, index_seed=index_seed, resume=resume, overwrite=overwrite)
    rows = [("flat", "zero-shot", flat["before"]), ("flat", "ADORE trained on flat", flat["after"]),
            (spec, "zero-shot", pqr["before"]),
            (spec, "ADORE trained on flat", flat["other_indexes"][spec]["after"]),
            (spec, f"ADORE trained on {spec}", pqr["after"])]
    names = ["nDCG@10", "MRR@10", "MRR@100", "R@100"]
    print(f"\nSciFact test split, {model}:")
    print(f"{'index':<8}{'query encoder':<28}" + "".join(f"{n:>10}" for n in names))
    for index, label, m in rows:
        print(f"{index:<8}{label:<28}" + "".join(f"{m[n]:>10.4f}" for n in names))
    print(f"\nruns, trained query encoders and metrics.json files in {output}/")
    return {"flat": flat, spec: pqr}
