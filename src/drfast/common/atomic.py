"""Atomic writes: a reader (or a crash) sees the old file or folder or the complete new one, never half.

Every writer goes through a temp file or folder beside the target (same filesystem, so the final
rename is atomic), named per process so that two writers never share a temp path. New files and
folders get the permissions the user's umask gives (mkstemp/mkdtemp alone would make them private).

Temp names say who wrote them: `.NAME.HOST.PID.RANDOM.tmp` (and `.old` for a folder being replaced),
HOST being the host name plus the pid namespace. A writer killed with SIGKILL leaves its temp behind
(tens of GB for an index or a corpus cache), so the next writer of the same output removes, and logs,
the temps of writers on this host whose pid is no longer alive, and leaves a live writer's alone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # not thread-safe; only where /proc is missing
    os.umask(mask)
    return mask


def write_file_atomic(path: PathLike, write: Callable[[Any], None], mode: str = "wb", **open_kwargs) -> Path:
    """Calls write(f) on a temp file beside `path`, flushes it to disk and renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: PathLike, text: str) -> Path:
    return write_file_atomic(path, lambda f: f.write(text), "w", encoding="utf-8", newline="\n")


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_npy_atomic(path: PathLike, array: np.ndarray) -> Path:
    return write_file_atomic(path, lambda f: np.save(f, array))


def save_torch_atomic(path: PathLike, obj: Any) -> Path:
    return write_file_atomic(path, lambda f: torch.save(obj, f))


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yields a temp folder beside `path`; on success it replaces `path` (the old folder, if any, is
    moved aside first and deleted after the swap), on failure it is deleted. Callers decide beforehand
    whether an existing `path` may be replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: PathLike, path: PathLike) -> None:
    """Renames the folder `tmp` to `path`, replacing a folder already there."""
    path = Path(path)
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".old", dir=path.parent))
    os.rename(path, old / "x")  # move aside, swap in, then delete the old copy
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


# ---- temp names that identify their writer, and the removal of dead writers' leftovers -----------
_RANDOM = r"[A-Za-z0-9_]+"  # tempfile's random part: no dots, so the fields below split unambiguously


def _writer_tag() -> str:
    """This host, without dots: the host name plus the pid namespace (two containers may share a host
    name and a filesystem while their pids mean different processes)."""
    tag = socket.gethostname()
    with contextlib.suppress(OSError):
        tag += "-" + os.readlink("/proc/self/ns/pid")
    return re.sub(r"[^A-Za-z0-9-]+", "-", tag).strip("-")[:80] or "host"


def temp_prefix(path: PathLike) -> str:
    """`.NAME.HOST.PID.`: how this process's temp files and folders beside `path` begin."""
    return f".{Path(path).name}.{_writer_tag()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def remove_dead_leftovers(path: PathLike) -> List[Path]:
    """Removes the temp files and folders beside `path` that writers of `path` on this host left when
    they died (their pid is not alive), logging each; returns them. Temps of live writers, of other
    hosts and of unknown owners (names without a writer, from an earlier drfast) are left in place;
    the unknown ones are logged once per call as possibly stale."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    name = re.escape(path.name)
    ours = re.compile(rf"^\.{name}\.(?P<tag>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.{_RANDOM}\.(tmp|old)$")
    unknown = re.compile(rf"^\.{name}\.{_RANDOM}\.(tmp|old)$")
    tag, removed, stale = _writer_tag(), [], []
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            match = ours.match(entry.name)
            if match and match["tag"] == tag and not _pid_alive(int(match["pid"])):
                _remove(Path(entry.path))
                removed.append(Path(entry.path))
            elif not match and unknown.match(entry.name):
                stale.append(entry.name)
    for leftover in removed:
        logger.warning("removed %s, left by a writer of %s that is no longer running", leftover, path)
    if stale:
        logger.warning("%s holds temp files of an earlier writer that drfast cannot identify (%s); remove them "
                       "if no other process is writing %s", parent, ", ".join(sorted(stale)), path.name)
    return removed


def _remove(leftover: Path) -> None:
    if leftover.is_dir() and not leftover.is_symlink():
        shutil.rmtree(leftover, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
