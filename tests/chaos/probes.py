"""What several chaos cases watch with: a job's running time, a thread that probes the API's health, and
everything the API serves about a job in one string (to look for what must never reach it)."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import httpx

from tests.chaos.harness import Client


def seconds_running(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


class HealthProbe(threading.Thread):
    """Asks the API's /healthz every 0.5 s; counts failures and keeps the slowest answer."""

    def __init__(self, base_url: str):
        super().__init__(daemon=True)
        self.base_url = base_url
        self.probes = self.failures = 0
        self.slowest = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            started = time.monotonic()
            try:
                ok = httpx.get(self.base_url + "/healthz", timeout=10).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.probes += 1
            self.failures += not ok
            self.slowest = max(self.slowest, time.monotonic() - started)


def everything_served(client: Client, job_id: str) -> str:
    """The job, its events, metrics and samples as the API serves them, in one string."""
    parts = [client.http.get(f"/v1/jobs/{job_id}").text, client.http.get(f"/v1/jobs/{job_id}/metrics").text]
    parts.append(client.http.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}).text)
    cursor = None
    while True:
        page = client.http.get(
            f"/v1/jobs/{job_id}/samples", params={"limit": 100, **({"after": cursor} if cursor else {})}
        )
        parts.append(page.text)
        cursor = page.json().get("next_cursor")
        if not cursor:
            return "\n".join(parts)
