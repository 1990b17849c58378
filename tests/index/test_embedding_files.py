"""A user's own embeddings and ids (drfast.index.embedding_files) and `drfast index --embeddings --doc-ids`."""
import numpy as np
import pytest

import drfast
from drfast.cli import main
from drfast.index.embedding_files import open_embeddings, read_doc_ids


def write_bin(path, emb, header=None):
    n, d = emb.shape if header is None else header
    with open(path, "wb") as f:
        f.write(np.array([n, d], "<i4").tobytes())
        f.write(np.ascontiguousarray(emb).tobytes())
    return path


def write_ids(path, ids, end="\n"):
    path.write_text(end.join(ids) + end, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix, dtype", [(".npy", np.float32), (".npy", np.float16), (".fbin", np.float32),
                                           (".f16bin", np.float16)])
def test_embeddings_are_memory_mapped_and_equal_to_the_written_rows(tmp_path, rng, suffix, dtype):
    emb = rng.standard_normal((37, 12)).astype(dtype)
    path = tmp_path / f"emb{suffix}"
    np.save(path, emb) if suffix == ".npy" else write_bin(path, emb)
    got = open_embeddings(path)
    assert isinstance(got, np.memmap) and got.dtype == dtype and got.shape == (37, 12)
    np.testing.assert_array_equal(got, emb)
    assert not got.flags.writeable


@pytest.mark.parametrize("suffix, header, size, message", [
    (".fbin", (10, 4), 8 + 10 * 4 * 4 - 4, "has 164 bytes, but its header (N=10, d=4)"),
    (".fbin", (10, 4), 8 + 10 * 4 * 2, "is it a .f16bin file?"),
    (".f16bin", (10, 4), 8 + 10 * 4 * 4, "is it a .fbin file?"),
    (".fbin", (0, 4), 8, "bad header (N=0, d=4)"),
    (".fbin", (5, -3), 8, "bad header (N=5, d=-3)"),
])
def test_bad_bin_headers_and_sizes_are_refused(tmp_path, suffix, header, size, message):
    path = tmp_path / f"emb{suffix}"
    with open(path, "wb") as f:
        f.write(np.array(header, "<i4").tobytes() + b"\0" * (size - 8))
    with pytest.raises(ValueError, match=r"^embeddings: .*" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?").replace(".", r"\.")):
        open_embeddings(path)


def test_short_header_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "x.fbin").write_bytes(b"\1\0\0")
    with pytest.raises(ValueError, match="^embeddings: .* less than its 8-byte header"):
        open_embeddings(tmp_path / "x.fbin")
    with pytest.raises(ValueError, match=r"^embeddings: expected a \.npy, \.fbin"):
        open_embeddings(tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError, match="^embeddings: .* is not a file"):
        open_embeddings(tmp_path / "none.npy")


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 3), np.float64), "holds float64 values; expected float32 or float16"),
    (np.zeros((4, 3), np.int8), "holds int8 values"),
    (np.zeros(6, np.float32), r"shape \(6,\); expected a 2-D"),
    (np.zeros((2, 3, 4), np.float32), r"shape \(2, 3, 4\); expected a 2-D"),
    (np.zeros((0, 3), np.float32), r"holds a \[0, 3\] matrix"),
    (np.asfortranarray(np.zeros((4, 3), np.float32)), "Fortran"),
])
def test_bad_npy_arrays_are_refused(tmp_path, array, message):
    np.save(tmp_path / "e.npy", array)
    with pytest.raises(ValueError, match="^embeddings: .*" + message):
        open_embeddings(tmp_path / "e.npy")


def test_a_pickled_or_broken_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="^embeddings: .* not a readable .npy file"):
        open_embeddings(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match="^embeddings: .* not a readable .npy file"):
        open_embeddings(tmp_path / "junk.npy")


def test_doc_ids_are_read_one_per_line(tmp_path):
    ids = ["d1", "doc-2", "é3"]
    assert list(read_doc_ids(write_ids(tmp_path / "a.txt", ids), expected=3)) == ids
    assert list(read_doc_ids(write_ids(tmp_path / "b.txt", ids, end="\r\n"))) == ids  # CRLF
    (tmp_path / "c.txt").write_text("d1\nd2")  # no final line end
    assert list(read_doc_ids(tmp_path / "c.txt")) == ["d1", "d2"]


@pytest.mark.parametrize("text, expected, message", [
    ("a\nb\n", 3, "holds 2 ids but the embeddings have 3 rows"),
    ("a\nb\na\n", 3, "duplicate id 'a' \\(rows 0 and 2\\)"),
    ("a\n\nb\n", 3, "line 2: .*empty"),
    ("a\x00\nb\n", 2, "NUL"),
])
def test_bad_doc_id_files_are_refused(tmp_path, text, expected, message):
    (tmp_path / "ids.txt").write_text(text)
    with pytest.raises(ValueError, match="^doc_ids: .*" + message):
        read_doc_ids(tmp_path / "ids.txt", expected=expected)
    with pytest.raises(FileNotFoundError, match="^doc_ids: cannot read"):
        read_doc_ids(tmp_path / "none.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\n")
    with pytest.raises(ValueError, match="^doc_ids: .* not UTF-8"):
        read_doc_ids(tmp_path / "bad.txt")


# ---- drfast index --embeddings --doc-ids ------------------------------------------------------------
@pytest.mark.parametrize("suffix, dtype, first_pass", [(".npy", np.float16, "none"), (".fbin", np.float32, "int8"),
                                                       (".f16bin", np.float16, "none")])
def test_index_command_saves_a_flat_index_that_searches_like_one_built_in_memory(tmp_path, rng, suffix, dtype,
                                                                                  first_pass):
    emb = rng.standard_normal((500, 24)).astype(dtype)
    emb[7] = emb[3]  # a tie, broken by row order in both
    path = tmp_path / f"emb{suffix}"
    np.save(path, emb) if suffix == ".npy" else write_bin(path, emb)
    ids = [f"doc-{i * 7 % 500}" for i in range(500)]
    out = tmp_path / "index"
    assert main(["index", "--embeddings", str(path), "--doc-ids", str(write_ids(tmp_path / "ids.txt", ids)),
                 "--first-pass", first_pass, "--output", str(out)]) == 0
    saved = drfast.load_index(out)
    assert isinstance(saved, drfast.FlatIndex) and list(saved.doc_ids) == ids and saved.dtype == np.dtype(dtype).name
    assert saved.first_pass_kind == (None if first_pass == "none" else "int8")
    reference = drfast.FlatIndex(emb, ids)
    queries = rng.standard_normal((9, 24)).astype(np.float32)
    positives = [[int(p)] for p in rng.integers(0, 500, 9)]
    got, want = (ix.search(queries, k=20, positives=positives, cutoff=10) for ix in (saved, reference))
    for name in ("ids", "scores", "pos_ranks", "pos_scores", "pair_weights"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_index_command_trains_pq_on_own_embeddings(tmp_path, rng):
    emb = rng.standard_normal((600, 16)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    ids = [str(i) for i in range(600)]
    out = tmp_path / "pq"
    assert main(["index", "--embeddings", str(tmp_path / "e.npy"), "--doc-ids", str(write_ids(tmp_path / "i", ids)),
                 "--index", "pq:4", "--index-seed", "3", "--output", str(out)]) == 0
    saved = drfast.load_index(out)
    want = drfast.PQIndex.train(emb, m=4, seed=3, doc_ids=ids)
    np.testing.assert_array_equal(np.asarray(saved.codes), want.codes)
    np.testing.assert_array_equal(saved.centroids.numpy(), want.centroids.numpy())


@pytest.mark.parametrize("argv, message", [
    (["--embeddings", "{emb}"], "--doc-ids: required with --embeddings"),
    (["--doc-ids", "{ids}"], "--embeddings: required with --doc-ids"),
    (["--embeddings", "{emb}", "--doc-ids", "{ids}", "--data", "{tmp}"], "--embeddings: give either --embeddings"),
    (["--data", "{tmp}"], "--model: required: give --data and --model"),
    ([], "--data: required: give --data and --model"),
    (["--embeddings", "{emb}", "--doc-ids", "{short}"], "--doc-ids: {short} holds 2 ids but the embeddings have 300"),
    (["--embeddings", "{nan}", "--doc-ids", "{ids}"], "--embeddings: {nan} contains NaN or Inf"),
    (["--embeddings", "{emb}", "--doc-ids", "{ids}", "--index", "pq:5"], "--index: 'pq:5': M=5 must divide"),
    (["--embeddings", "{f64}", "--doc-ids", "{ids}"], "--embeddings: {f64} holds float64 values"),
])
def test_index_command_errors_name_the_flag(tmp_path, rng, capsys, argv, message):
    fill = dict(tmp=tmp_path, emb=tmp_path / "e.npy", ids=tmp_path / "ids.txt", short=tmp_path / "short.txt",
                nan=tmp_path / "nan.npy", f64=tmp_path / "f64.npy")
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    np.save(fill["emb"], emb)
    np.save(fill["f64"], emb.astype(np.float64))
    emb[5, 2] = np.nan
    np.save(fill["nan"], emb)
    write_ids(fill["ids"], [f"d{i}" for i in range(300)])
    write_ids(fill["short"], ["a", "b"])
    argv = ["index"] + [a.format(**fill) for a in argv] + ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drfast index: error: {message.format(**fill)}"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".npy", ".f16bin"])
def test_a_flat_index_keeps_the_opened_rows_without_a_copy(tmp_path, rng, suffix):
    emb = rng.standard_normal((50, 8)).astype(np.float16)
    path = tmp_path / f"e{suffix}"
    np.save(path, emb) if suffix == ".npy" else write_bin(path, emb)
    rows = open_embeddings(path)
    assert np.shares_memory(drfast.FlatIndex(rows).emb, rows)


def test_a_faiss_index_saved_as_a_drfast_folder_loads_with_its_ids(tmp_path, rng):
    pytest.importorskip("faiss")
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    ids = [f"p{i}" for i in range(40)]
    drfast.load_faiss_index(drfast.FlatIndex(emb).to_faiss(), doc_ids=ids).save(tmp_path / "ix")
    loaded = drfast.load_index(tmp_path / "ix")
    assert list(loaded.doc_ids) == ids
    np.testing.assert_array_equal(np.asarray(loaded.emb), emb)
