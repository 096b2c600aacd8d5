"""Writing a file or a folder so that a reader (or a process restarted after a crash) sees all of it or none."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write a file or a folder at; when the block ends without error,
    everything written is fsynced and renamed to `final` in one step, and on error it is removed.

    The temporary name starts with `.tmp-` in the same folder (so the rename stays on one file system), which
    lets a caller find and delete what a crash left behind. replace=False keeps an existing `final` (another
    process that wrote the same thing first wins) and discards this one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TEMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        files = sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else [tmp]
        for path in [*files, tmp]:
            fsync_path(path)
        if final.exists() and not replace:
            _remove(tmp)
            return
        if final.is_dir() and not final.is_symlink():  # a folder cannot be renamed over a folder: the old one goes
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if replace or not final.exists():
                raise
            _remove(tmp)  # another process renamed its copy into place first: keep theirs
            return
        fsync_path(final.parent)
    except BaseException:
        _remove(tmp)
        raise
