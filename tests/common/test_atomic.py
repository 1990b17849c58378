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


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process until the system reuses it
    return child.pid


def test_temp_names_identify_their_writer(tmp_path):
    from drfast.common.atomic import temp_prefix

    seen = []

    def spy(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write("x")
    from drfast.common.atomic import write_file_atomic
    write_file_atomic(tmp_path / "f.txt", spy, "w")
    with atomic_dir(tmp_path / "d"):
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "f.txt")
    prefix_f, prefix_d = temp_prefix(tmp_path / "f.txt"), temp_prefix(tmp_path / "d")
    assert str(os.getpid()) in prefix_f
    assert any(n.startswith(prefix_f) and n.endswith(".tmp") for n in seen)
    assert any(n.startswith(prefix_d) and n.endswith(".tmp") for n in seen)


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_the_next_writer_removes_a_dead_writers_leftover_and_keeps_a_live_ones(tmp_path, kind, caplog):
    """kill -9 during a write leaves `.NAME.HOST.PID.RANDOM.tmp`; the next writer of NAME removes it
    when PID is dead on this host, and leaves a live writer's temp (here: this process's parent) alone."""
    from drfast.common.atomic import temp_prefix

    target = tmp_path / ("index" if kind == "folder" else "chunk.npy")
    dead_prefix = temp_prefix(target).replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    live_prefix = temp_prefix(target).replace(f".{os.getpid()}.", f".{os.getppid()}.")
    dead, live, dead_old = (tmp_path / (dead_prefix + "k3j_x9.tmp"), tmp_path / (live_prefix + "abc123.tmp"),
                            tmp_path / (dead_prefix + "q1w2e3.old"))
    other = tmp_path / (".other." + dead_prefix.split(".", 2)[2] + "zz.tmp")  # another output's temp
    for p in (dead, live, dead_old, other):
        p.mkdir()
        (p / "embeddings.npy").write_bytes(b"\0" * 1000)
    with caplog.at_level("WARNING", logger="drfast.common.atomic"):
        if kind == "folder":
            with atomic_dir(target) as tmp:
                (tmp / "x").write_text("1")
        else:
            save_npy_atomic(target, np.arange(3))
    assert not dead.exists() and not dead_old.exists()
    assert live.exists() and other.exists()
    assert str(dead) in caplog.text and str(live) not in caplog.text


def test_temps_of_unknown_writers_are_reported_not_removed(tmp_path, caplog):
    old_style = tmp_path / ".d.k3j_x9ab.tmp"  # named before temp names said who wrote them
    old_style.mkdir()
    with caplog.at_level("WARNING", logger="drfast.common.atomic"):
        with atomic_dir(tmp_path / "d"):
            pass
    assert old_style.exists() and old_style.name in caplog.text


def test_a_writer_killed_with_sigkill_leaves_a_temp_the_next_writer_removes(tmp_path):
    """The real thing: a process killed (SIGKILL) inside atomic_dir leaves its temp folder; the next
    write of the same output removes it."""
    import signal
    import subprocess
    import sys

    script = ("import sys, time; from drfast.common.atomic import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n"
              "    (tmp / 'embeddings.npy').write_bytes(bytes(1 << 20)); print('ready', flush=True); time.sleep(600)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "index")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and f".{writer.pid}." in leftovers[0].name
    with atomic_dir(tmp_path / "index") as tmp:
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
