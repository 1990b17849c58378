"""drfast.common.atomic: complete files or nothing, permissions from the umask."""
import json
import os
import stat

import numpy as np
import pytest

from drfast.common.atomic import atomic_dir, save_npy_atomic, write_json_atomic, write_text_atomic


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_replace_and_leave_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a" / "m.json", {"x": 1})
    write_json_atomic(tmp_path / "a" / "m.json", {"x": 2})
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"x": 2}
    save_npy_atomic(tmp_path / "a" / "r.npy", np.arange(3))
    assert np.load(tmp_path / "a" / "r.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m.json", "r.npy"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    write_text_atomic(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError):
        from drfast.common.atomic import write_file_atomic

        def boom(f):
            f.write("half")
            raise RuntimeError("disk full")
        write_file_atomic(tmp_path / "f.txt", boom, "w")
    assert (tmp_path / "f.txt").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_atomic_dir_replaces_a_folder_and_cleans_up_on_failure(tmp_path):
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(KeyError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "y").write_text("2")
            raise KeyError("interrupted")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x"]
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "z").write_text("3")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["z"] and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "d") == 0o777 & ~umask
