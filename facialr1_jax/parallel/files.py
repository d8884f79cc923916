"""Workdir files that may live on a local disk, a shared mount, or an object store (`gs://...`).

A multi-host run needs a workdir every host sees. Besides an NFS share or a gcsfuse mount, it may
be a bucket URL: orbax (tensorstore) writes checkpoints there itself, and everything else the
project writes into a workdir (metrics, reports, data reports, predictions, plots) goes through
these helpers, which use `etils.epath` (its `gs://` backend needs the `gcsfs` package, or
TensorFlow). Local paths keep plain-file semantics and are made absolute; URLs are left as they are
(`os.path.abspath("gs://b/run")` would turn them into `$PWD/gs:/b/run`).

Object stores cannot append to or rename objects cheaply; `write_text` therefore writes the whole
file in one go (an object upload replaces it atomically; locally a per-host, per-process temporary
file is renamed into place, so processes sharing a folder never collide on the temporary name).
"""

from __future__ import annotations

import os
import socket
from typing import IO

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """True for URLs such as gs://bucket/run or s3://...; False for local (or mounted) paths."""
    return "://" in os.fspath(path)


def resolve(path: PathLike) -> str:
    """The path as a string: absolute when local, unchanged when it is a URL."""
    text = os.fspath(path)
    return text if is_remote(text) else os.path.abspath(text)


def as_path(path: PathLike) -> epath.Path:
    """An `epath.Path` for `path` (local paths absolute)."""
    return epath.Path(resolve(path))


def makedirs(path: PathLike) -> str:
    """Creates the folder (and parents) if missing; returns the resolved path."""
    folder = as_path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return os.fspath(folder)


def exists(path: PathLike) -> bool:
    return as_path(path).exists()


def open_file(path: PathLike, mode: str = "r") -> IO:
    """`open` for local paths and URLs alike (text modes read and write UTF-8)."""
    if is_remote(path):
        return as_path(path).open(mode)
    return open(resolve(path), mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def read_text(path: PathLike) -> str:
    with open_file(path, "r") as stream:
        return stream.read()


def write_text(path: PathLike, text: str) -> None:
    """Writes `text` whole (readers never see half a file), creating the parent folder.

    Locally: written to `.<name>.<host>-<pid>.tmp` beside the target, then renamed over it (atomic
    on POSIX; host name and process id keep concurrent writers on a shared folder apart). On an object store:
    one upload, which replaces the object atomically.
    """
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        target.write_text(text)
        return
    temporary = target.with_name(f".{target.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
