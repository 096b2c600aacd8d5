"""Where files live. Every path is built from ids the server made (validated here again), never from user input."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

from grpo_core.checkpoint_layout import ADAPTER_FILES, step_dir_name
from grpo_core.files import atomic_write
from service_core.settings import get_settings

_ID = re.compile(r"^[a-z]{2,4}_[0-9a-f]{32}$")
# Written into a checkpoint's folder beside the files grpo_core.checkpoint_layout names (which ignores it).
ARCHIVE_NAME = "adapter.tar.gz"


class OutsideArtifacts(Exception):
    """A file to serve is missing, not a regular file, or resolves (through a symlink) outside the artifacts folder."""


def is_server_id(value: str) -> bool:
    """Whether `value` has the shape of an id the server makes (prefix_32hex); nothing else is ever looked up."""
    return _ID.fullmatch(value) is not None


def _checked(server_id: str) -> str:
    if not is_server_id(server_id):
        raise ValueError(f"not a server-made id: {server_id!r}")
    return server_id


def dataset_path(dataset_id: str) -> Path:
    return get_settings().artifacts_dir / "datasets" / f"{_checked(dataset_id)}.jsonl"


def job_dir(job_id: str) -> Path:
    return get_settings().artifacts_dir / "jobs" / _checked(job_id)


def checkpoint_dir(job_id: str, step: int) -> Path:
    """A job's checkpoint folder for `step`, as grpo_core.checkpoint names it."""
    return job_dir(job_id) / "checkpoints" / step_dir_name(step)


def checkpoint_archive(job_id: str, step: int) -> Path:
    return checkpoint_dir(job_id, step) / ARCHIVE_NAME


def remove_dataset_file(dataset_id: str) -> None:
    """Remove a deleted dataset's file; one already gone (a delete retried, another worker first) is no error."""
    dataset_path(dataset_id).unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a job's or a checkpoint's folder, whatever it holds; a folder already gone is no error, so a removal
    that stopped half-way is finished by the next one."""
    shutil.rmtree(path, ignore_errors=True)


def adapter_folder_name(job_id: str, step: int) -> str:
    """The folder an adapter archive unpacks to, and (with .tar.gz) the name it downloads as."""
    return f"{job_id}-step-{int(step)}"


def servable(path: Path) -> Path:
    """The real path of a file to send, once it is shown to be a regular file inside the artifacts folder. A
    symlink (of the file or of any folder above it) pointing elsewhere, planted by anyone who can write to the
    artifacts folder, raises OutsideArtifacts instead of serving what it points to. Send the returned path, not
    `path`, so the file opened is the one checked."""
    root = get_settings().artifacts_dir
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a dangling link, a symlink loop
        raise OutsideArtifacts(f"{path} does not exist") from None
    if not real.is_relative_to(root) or not real.is_file():
        raise OutsideArtifacts(f"{path} resolves to {real}, not a file inside {root}")
    return real


def write_atomically(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def pack_adapter(checkpoint_dir: Path, folder_name: str) -> tuple[Path, str, int]:
    """Write checkpoint_dir/adapter.tar.gz holding `folder_name/` with the PEFT adapter files (what
    PeftModel.from_pretrained loads), reproducibly: fixed mtimes and owners, so the same adapter gives the same
    bytes. Returns (path, sha256, size)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in ADAPTER_FILES:
            data = (checkpoint_dir / name).read_bytes()
            info = tarfile.TarInfo(f"{folder_name}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    data = gzip.compress(buffer.getvalue(), mtime=0)
    path = checkpoint_dir / ARCHIVE_NAME
    write_atomically(path, data)
    return path, hashlib.sha256(data).hexdigest(), len(data)
