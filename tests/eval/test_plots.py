import json

import numpy as np
import pytest

from drfast.cli import main
from drfast.eval.plots import find_train_log, plot_run, read_train_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(folder, records, tail=""):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train_log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def adore_records(steps=12, every=3):
    records = [{"step": 0, "epoch": 0, "static_overlap": 1.0, "train_mrr10": 0.40, "eval_nDCG@10": 0.60,
                "eval_MRR@10": 0.55}]
    for s in range(1, steps + 1):
        r = {"step": s, "epoch": 1, "lr": 1e-5, "loss": 1.0 / s, "mrr10": 0.4 + 0.02 * s, "pairs": 100.0}
        if s % every == 0:
            r.update(static_overlap=1.0 - 0.05 * s, train_mrr10=0.4 + 0.02 * s, **{"eval_nDCG@10": 0.6 + 0.01 * s})
        records.append(r)
    return records


def check_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert np.ptp(image[..., :3]) > 0  # not a blank canvas


def test_plot_writes_a_png_next_to_the_log(tmp_path):
    write_log(tmp_path, adore_records())
    out = plot_run(tmp_path)
    assert out == tmp_path / "training.png"
    check_png(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_plot_finds_the_run_folder_of_an_output_and_takes_another_path(tmp_path):
    write_log(tmp_path / "run", adore_records())
    assert find_train_log(tmp_path) == tmp_path / "run" / "train_log.jsonl"
    check_png(plot_run(tmp_path))
    out = plot_run(tmp_path, tmp_path / "figs" / "curves.png")
    assert out == tmp_path / "figs" / "curves.png"
    check_png(out)
    assert plot_run(tmp_path, tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"


def test_only_panels_with_data(tmp_path):
    # a STAR run without the diagnostic: the loss alone
    write_log(tmp_path, [{"step": s, "epoch": 1, "loss": 2.0 / s, "docs": 8.0} for s in range(1, 6)])
    check_png(plot_run(tmp_path))
    write_log(tmp_path, [{"step": 1, "epoch": 1, "lr": 0.1}])
    with pytest.raises(ValueError, match="no curve to plot .*keys in the log: epoch, lr, step"):
        plot_run(tmp_path)


def test_missing_empty_and_broken_logs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=f"run_dir: no train_log.jsonl in {tmp_path}"):
        plot_run(tmp_path)
    path = write_log(tmp_path, [])
    with pytest.raises(ValueError, match=f"{path}: the log has no records"):
        plot_run(tmp_path)
    path.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 0.5}\n')
    with pytest.raises(ValueError, match=f"{path}:2: not a JSON record"):
        read_train_log(path)
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match='integer "step"'):
        read_train_log(path)
    # a run still writing: a last line without its newline is skipped
    write_log(tmp_path, adore_records(3), tail='{"step": 4, "lo')
    assert [r["step"] for r in read_train_log(path)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="output: .* image format"):
        plot_run(tmp_path, tmp_path / "curves.xyz")


def test_drfast_plot_command(tmp_path, capsys):
    write_log(tmp_path / "run", adore_records())
    assert main(["plot", str(tmp_path)]) == 0
    assert f"training curves written to {tmp_path / 'training.png'}" in capsys.readouterr().out
    check_png(tmp_path / "training.png")
    assert main(["plot", str(tmp_path / "run"), "--output", str(tmp_path / "x.png")]) == 0
    check_png(tmp_path / "x.png")
