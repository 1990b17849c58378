"""Atomic writes: a reader (or a crash) sees the old file or folder or the complete new one, never half.

Every writer goes through a temp file or folder beside the target (same filesystem, so the final
rename is atomic), named per process so that two writers never share a temp path. New files and
folders get the permissions the user's umask gives (mkstemp/mkdtemp alone would make them private).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rename(path, old / "x")  # move aside, swap in, then delete the old copy
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
