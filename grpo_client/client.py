"""`Client(url, key)`: the REST API as typed Python calls, grouped by resource."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from grpo_client.types import (
    TERMINAL_STATUSES,
    Checkpoint,
    Dataset,
    Download,
    Event,
    Job,
    Metric,
    Model,
    Reward,
    RewardRef,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# The server sends a keep-alive comment after 15 s without events, so a read waiting far longer than that is a
# connection that died without closing; watch() then reconnects.
STREAM_READ_TIMEOUT = 60.0
RECONNECT_ATTEMPTS = 5  # in a row without an event in between; then watch() gives up
MAX_RETRY_WAIT = 30.0


class ApiError(Exception):
    """The API refused a request: `status` is the HTTP status, `detail` the API's explanation, `errors` each problem
    when there are several (a 422 lists each invalid field)."""

    def __init__(self, status: int, detail: str, errors: list[str] | None = None, retry_after: float | None = None):
        self.status, self.detail, self.errors, self.retry_after = status, detail, errors or [], retry_after
        super().__init__(f"HTTP {status}: {self.explanation}")

    @property
    def explanation(self) -> str:
        """`detail`, followed by each problem in `errors` that it does not already name."""
        more = [error for error in self.errors if error not in self.detail]
        return f"{self.detail}: {'; '.join(more)}" if more else self.detail


class ChecksumMismatch(Exception):
    """A download's bytes do not hash to the sha256 the API announced; nothing was written."""

    def __init__(self, expected: str, actual: str):
        super().__init__(f"sha256 mismatch: the API announced {expected}, the bytes received hash to {actual}")
        self.expected, self.actual = expected, actual


class StreamLost(Exception):
    """watch() could not reconnect to a job's event stream."""


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        body = response.json()
        detail, errors = str(body["detail"]), [str(e) for e in body.get("errors", [])]
    except (ValueError, KeyError, TypeError):
        detail, errors = response.text.strip()[:500] or response.reason_phrase, []
    retry_after = response.headers.get("Retry-After")
    raise ApiError(
        response.status_code, detail, errors, float(retry_after) if retry_after and retry_after.isdigit() else None
    )


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Server-Sent Events from the stream's lines, per the HTML standard's parsing rules: `field: value` lines, a
    blank line ends an event, `:` starts a comment (the server's keep-alives). An event cut off before its blank
    line (a dropped connection) is never yielded."""
    event_id: int | None = None
    event_type = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(id=event_id, type=event_type, data=json.loads("\n".join(data)))
            event_type, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event_type = value
        elif field == "id" and value.isdigit():
            event_id = int(value)


def _segment(value: str | int) -> str:
    """An id as one path segment: an id holding `/`, `?` or `..` must not reach another endpoint."""
    return urllib.parse.quote(str(value), safe="")


def _is_end(event: Event) -> bool:
    return event.type == "status" and isinstance(event.data, dict) and event.data.get("status") in TERMINAL_STATUSES


class _Resource:
    def __init__(self, client: Client):
        self._client = client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.http.request(method, path, **kwargs)
        _raise_for_status(response)
        return response.json()


class Datasets(_Resource):
    def upload(self, path: str | os.PathLike[str]) -> Dataset:
        """Upload a JSONL file of prompts (one object per line: `prompt` or chat `messages`, plus fields)."""
        path = Path(path)
        with path.open("rb") as file:
            return self._request("POST", "/v1/datasets", files={"file": (path.name, file)})

    def list(self) -> list[Dataset]:
        return self._request("GET", "/v1/datasets")["data"]

    def get(self, dataset_id: str) -> Dataset:
        return self._request("GET", f"/v1/datasets/{_segment(dataset_id)}")


class Jobs(_Resource):
    def create(
        self,
        *,
        model: str,
        dataset: str,
        rewards: Sequence[str | RewardRef],
        hyperparameters: dict[str, Any] | None = None,
        eval_dataset: str | None = None,
        hardware: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a GRPO job. `rewards` are names (weight 1) or {name, weight, params}; omitted hyperparameters
        take the API's defaults. With `idempotency_key`, a retry returns the job the first call made."""
        body: dict[str, Any] = {
            "base_model": model,
            "dataset_id": dataset,
            "rewards": [{"name": r} if isinstance(r, str) else dict(r) for r in rewards],
            "hyperparameters": hyperparameters or {},
        }
        if eval_dataset is not None:
            body["eval_dataset_id"] = eval_dataset
        if hardware is not None:
            body["hardware"] = hardware
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/jobs", json=body, headers=headers)

    def list(self, status: str | None = None, *, limit: int = 20, offset: int = 0) -> list[Job]:
        """Newest first; `limit` at most 100 (the API's page)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return self._request("GET", "/v1/jobs", params=params)["data"]

    def get(self, job_id: str) -> Job:
        return self._request("GET", f"/v1/jobs/{_segment(job_id)}")

    def cancel(self, job_id: str) -> Job:
        """Stop a queued job at once, or a running one before its next step."""
        return self._request("POST", f"/v1/jobs/{_segment(job_id)}/cancel")

    # builtins.list: inside these classes `list` is the list() method.
    def metrics(self, job_id: str, *, after_step: int = -1) -> builtins.list[Metric]:
        """Every metric row after `after_step` (train rows, and eval rows: step 0 is before training), all pages."""
        rows: builtins.list[Metric] = []
        cursor: int | None = after_step
        while cursor is not None:
            page = self._request(
                "GET", f"/v1/jobs/{_segment(job_id)}/metrics", params={"after_step": cursor, "limit": 1000}
            )
            rows += page["data"]
            cursor = page["next_after_step"]
        return rows

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        return self._request("GET", f"/v1/jobs/{_segment(job_id)}/checkpoints")["data"]

    def watch(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events (status, metrics, checkpoint, warning) as they happen, from the first one or from after
        `last_event_id`, until the job has ended and every event was sent. A dropped connection is resumed with the
        Last-Event-ID header, so no event is lost or repeated; after RECONNECT_ATTEMPTS failures in a row without
        an event, StreamLost."""
        failures = 0
        finished = False
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            timeout = httpx.Timeout(self._client.timeout, read=STREAM_READ_TIMEOUT)
            try:
                with self._client.http.stream(
                    "GET", f"/v1/jobs/{_segment(job_id)}/events", headers=headers, timeout=timeout
                ) as response:
                    _raise_for_status(response)
                    for event in parse_events(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last_event_id = event.id
                        finished = finished or _is_end(event)
                        yield event
                # The server ends the stream only once the job has ended and every event was sent; a stream closed
                # cleanly before that (by a proxy, say) is resumed like a dropped one.
                if finished or self.get(job_id)["status"] in TERMINAL_STATUSES:
                    return
                problem, retry_after = "the stream ended before the job did", None
            except (httpx.TransportError, ApiError) as error:
                # 429: this tenant's streams are at their cap, which the dropped stream may still count against
                # until the server notices it is gone. Anything else the API says is final.
                if isinstance(error, ApiError) and error.status != 429:
                    raise
                problem, retry_after = str(error) or type(error).__name__, getattr(error, "retry_after", None)
            failures += 1
            if failures > RECONNECT_ATTEMPTS:
                raise StreamLost(f"the event stream of {job_id} dropped and did not come back: {problem}")
            time.sleep(min(retry_after or 0.5 * 2**failures, MAX_RETRY_WAIT))

    def download(self, job_id: str, dest: str | os.PathLike[str] = ".", *, step: int | None = None) -> Download:
        """Write the job's adapter archive (.tar.gz; the latest checkpoint, or `step`'s) to `dest`, a file path or
        a folder (named `<job>-step-<N>.tar.gz` there). The bytes are hashed as they arrive and checked against the
        API's X-Checksum-SHA256 header before the file takes its name: on a mismatch ChecksumMismatch is raised
        and no file is left behind, not even a partial one."""
        dest = Path(dest)
        path = (
            f"/v1/jobs/{_segment(job_id)}/adapter"
            if step is None
            else f"/v1/jobs/{_segment(job_id)}/checkpoints/{_segment(step)}/adapter"
        )
        with self._client.http.stream("GET", path) as response:
            _raise_for_status(response)
            expected = response.headers.get("X-Checksum-SHA256", "").lower()
            if not expected:
                raise ApiError(response.status_code, "the download came without an X-Checksum-SHA256 header")
            served_step = int(response.headers.get("X-Checkpoint-Step", step if step is not None else -1))
            target = dest / f"{Path(job_id).name}-step-{served_step}.tar.gz" if dest.is_dir() else dest
            digest, size = hashlib.sha256(), 0
            # Written beside the target, then renamed over it: the name never holds a partial or unverified file.
            partial = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
            try:
                with partial:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        partial.write(chunk)
                        size += len(chunk)
                if digest.hexdigest() != expected:
                    raise ChecksumMismatch(expected, digest.hexdigest())
                os.replace(partial.name, target)
            except BaseException:
                Path(partial.name).unlink(missing_ok=True)
                raise
        return Download(path=target, step=served_step, sha256=expected, bytes=size)


class Rewards(_Resource):
    def list(self) -> list[Reward]:
        """Rewards a job can name: built-ins, the operator's plugins, and this tenant's uploads (named by `id`)."""
        return self._request("GET", "/v1/rewards")["data"]


class Models(_Resource):
    def list(self) -> list[Model]:
        """Base models a job can name."""
        return self._request("GET", "/v1/models")["data"]


class Client:
    """The grpo-service REST API. `url` defaults to $GRPO_API_URL (else http://127.0.0.1:8000), `key` to
    $GRPO_API_KEY. Every call raises ApiError when the API refuses it. Use as a context manager, or close()."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0):
        url = url or os.environ.get("GRPO_API_URL") or DEFAULT_URL
        key = key or os.environ.get("GRPO_API_KEY")
        if not key:
            raise ValueError("no API key: pass key= or set GRPO_API_KEY (`grpo keys create --tenant NAME` makes one)")
        self.timeout = timeout
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.rewards = Rewards(self)
        self.models = Models(self)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
