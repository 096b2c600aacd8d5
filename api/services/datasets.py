"""Uploaded JSONL datasets: parsed once on upload, stored under their id, read back by tenant."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.services import InvalidInput, NotFound
from grpo_core.data import DatasetError, parse_jsonl, summarize_dataset
from service_core import artifacts
from service_core.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Dataset, Job, Preflight, utcnow
from service_core.settings import get_settings


def display_name(filename: str, default: str = "dataset.jsonl") -> str:
    """An uploaded file's name as a label only (files are stored under the object's id): the last path component,
    without control characters (a NUL byte cannot be stored in PostgreSQL text), at most 200 characters."""
    base = re.split(r"[/\\]", filename)[-1]
    cleaned = "".join(c for c in base if c.isprintable()).strip()
    return cleaned[:200] if cleaned not in ("", ".", "..") else default


def create_dataset(session: Session, *, tenant_id: str, name: str, content: bytes) -> Dataset:
    """Parse and store an uploaded JSONL file with grpo_core.data.parse_jsonl, the parser the worker reads it with;
    bad lines raise InvalidInput naming each line and why, as does a file past the operator's row limit."""
    try:
        rows = parse_jsonl(content)
    except DatasetError as error:
        raise InvalidInput(
            f"the JSONL file has {error.total} bad line(s); nothing was stored", [str(e) for e in error.errors]
        ) from None
    limit = get_settings().max_dataset_rows
    if len(rows) > limit:
        raise InvalidInput(
            f"the JSONL file has {len(rows)} rows, more than the operator's limit of {limit} "
            "(GRPO_MAX_DATASET_ROWS); nothing was stored"
        )
    summary = summarize_dataset(rows)
    dataset = Dataset(
        tenant_id=tenant_id,
        name=display_name(name),
        rows=len(rows),
        fields=summary.fields,
        sha256=hashlib.sha256(content).hexdigest(),
        bytes=len(content),
        max_prompt_bytes=summary.max_prompt_bytes,
        max_prompt_messages=summary.max_prompt_messages,
        non_numeric_fields=summary.non_numeric_fields,
    )
    session.add(dataset)
    session.flush()
    artifacts.write_atomically(artifacts.dataset_path(dataset.id), content)
    return dataset


def list_datasets(session: Session, *, tenant_id: str) -> list[Dataset]:
    return list(
        session.scalars(
            select(Dataset)
            .where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
            .order_by(Dataset.created_at.desc())
        )
    )


def get_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset:
    # Only an id of the server's own shape reaches the database: others (path tricks, NUL bytes, which
    # PostgreSQL refuses in text with an error) answer like any other id that does not exist.
    if not artifacts.is_server_id(dataset_id):
        raise NotFound("dataset", dataset_id)
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    )
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    return dataset


def delete_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> None:
    """Mark a dataset deleted, unless a queued or running job or pre-flight reads it as its training or eval set
    (409 naming them): their worker reads the file when it starts, or again after a restart. Finished jobs keep
    their rows and adapters; their dataset_id then names a dataset that reads as gone. The caller commits, then
    removes the file (remove_dataset_file), so a delete that does not commit never loses it."""
    get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
    uses = (Job.dataset_id == dataset_id) | (Job.eval_dataset_id == dataset_id)
    jobs = session.scalars(
        select(Job.id).where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES), uses).order_by(Job.id)
    ).all()
    preflights = session.scalars(
        select(Preflight.id)
        .where(
            Preflight.tenant_id == tenant_id,
            Preflight.status.in_(ACTIVE_STATUSES),
            (Preflight.dataset_id == dataset_id) | (Preflight.eval_dataset_id == dataset_id),
        )
        .order_by(Preflight.id)
    ).all()
    users = []
    if jobs:
        users.append(f"job(s) {', '.join(jobs)}")
    if preflights:
        users.append(f"pre-flight(s) {', '.join(preflights)}")
    if users:
        raise InvalidInput(
            f"dataset {dataset_id!r} is used by queued or running {' and '.join(users)}; cancel them or wait until "
            "they end, then delete it",
            status_code=409,
        )
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None))
        .values(deleted_at=utcnow())
        .execution_options(synchronize_session=False)
    )
