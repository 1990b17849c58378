"""drfast.Index (the protocol every index satisfies), the public construction / loading names, and the
fingerprint that ties a flat index's first-pass copy to the rows it was built from."""
import json
import logging

import numpy as np
import pytest
import torch

import drfast
from drfast.index.fingerprint import SAMPLE_ROWS, rows_fingerprint, sampled_rows


def test_every_index_satisfies_the_protocol(rng):
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    for index in (drfast.FlatIndex(emb), drfast.FlatIndex(emb, first_pass="int8"),
                  drfast.PQIndex(np.zeros((2, 256, 4), np.float32), np.zeros((5, 2), np.uint8))):
        assert isinstance(index, drfast.Index)
        assert index.kind in ("flat", "pq") and index.device == torch.device("cpu")
    assert drfast.ShardedIndex.kind and "device" in dir(drfast.ShardedIndex)
    for member in ("kind", "ntotal", "dim", "device", "search", "reconstruct", "to", "save"):
        assert hasattr(drfast.ShardedIndex, member), member
    assert not isinstance(emb, drfast.Index) and "Index" in drfast.__all__


def test_first_pass_kind_and_data_are_public_and_moved_by_to(rng):
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    exact, two_stage = drfast.FlatIndex(emb), drfast.FlatIndex(emb, first_pass="int8")
    assert exact.first_pass_kind is None and exact.first_pass_data is None
    assert two_stage.first_pass_kind == "int8" and two_stage.first_pass_data.kind == "int8"
    moved = two_stage.to("cpu")
    assert moved.first_pass_kind == "int8" and moved.first_pass_rows_print == two_stage.first_pass_rows_print
    q = rng.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(moved.search(q, k=5).ids, exact.search(q, k=5).ids)
    assert moved.last_search_stats is not None


def test_load_classmethods_read_what_save_wrote(tmp_path, rng):
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    drfast.FlatIndex(emb, first_pass="bf16").save(tmp_path / "f")
    flat = drfast.FlatIndex.load(tmp_path / "f")
    assert flat.first_pass_kind == "bf16" and np.array_equal(np.asarray(flat.emb), emb)
    with pytest.warns(UserWarning):
        drfast.PQIndex.train(emb, m=2).save(tmp_path / "p")
    assert drfast.PQIndex.load(tmp_path / "p", mmap=False).m == 2


def test_the_fingerprint_samples_blocks_from_the_first_to_the_last_row():
    assert sampled_rows(10).tolist() == list(range(10))
    rows = sampled_rows(1_000_003)
    assert rows[0] == 0 and rows[-1] == 1_000_002 and len(rows) == SAMPLE_ROWS and np.all(np.diff(rows) > 0)
    just_over = sampled_rows(SAMPLE_ROWS + 1)  # overlapping blocks: still the first and the last row
    assert just_over[0] == 0 and just_over[-1] == SAMPLE_ROWS and np.all(np.diff(just_over) > 0)
    emb = np.arange(40, dtype=np.float32).reshape(10, 4)
    same = rows_fingerprint(torch.from_numpy(emb.copy()))
    assert rows_fingerprint(emb) == same  # numpy or torch: the same rows, the same fingerprint
    assert rows_fingerprint(emb.astype(np.float16)) != same and rows_fingerprint(emb[:9]) != same
    changed = emb.copy()
    changed[9, 3] += 1  # the last row is always sampled
    assert rows_fingerprint(changed) != same


def _rows_changed_after_saving(tmp_path, rng, kind):
    emb = rng.standard_normal((400, 16)).astype(np.float32)
    drfast.FlatIndex(emb, first_pass=kind).save(tmp_path / "ix")
    other = rng.standard_normal((400, 16)).astype(np.float32)  # e.g. re-encoded by another model
    np.save(tmp_path / "ix" / "embeddings.npy", other)
    return other


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_a_first_pass_built_from_other_rows_is_refused_on_load(tmp_path, rng, kind):
    """embeddings.npy replaced after saving: the stale first pass would return wrong ids and scores,
    so load_index refuses it, naming the folder."""
    _rows_changed_after_saving(tmp_path, rng, kind)
    with pytest.raises(drfast.UsageError, match="does not hold the rows its first pass") as info:
        drfast.load_index(tmp_path / "ix")
    assert str(tmp_path / "ix") in str(info.value) and info.value.param == "path"


def test_an_index_saved_before_fingerprints_loads_with_a_warning(tmp_path, rng, caplog):
    emb = rng.standard_normal((400, 16)).astype(np.float32)
    drfast.FlatIndex(emb, first_pass="int8").save(tmp_path / "ix")
    meta_file = tmp_path / "ix" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["first_pass_rows"]
    meta_file.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="drfast.index.flat"):
        back = drfast.load_index(tmp_path / "ix")
    assert back.first_pass_kind == "int8" and "without a fingerprint" in caplog.text


def test_save_refuses_rows_changed_in_place_after_the_first_pass(tmp_path, rng):
    emb = rng.standard_normal((400, 16)).astype(np.float32)
    index = drfast.FlatIndex(emb, first_pass="int8")
    emb[-1] += 1.0  # the caller's array, searched without a copy
    with pytest.raises(drfast.UsageError, match="rows changed after the first-pass copy"):
        index.save(tmp_path / "ix")
    assert not (tmp_path / "ix").exists()
    drfast.FlatIndex(emb).save(tmp_path / "exact")  # no first pass: nothing can be stale
