"""Case: one tenant floods the API (200 event streams on its job and 3 uploads near the size limit, all at once)
while another tenant polls its own job and /healthz. The second tenant must see no error, the streams past the
first tenant's cap must get 429, and nothing may answer 5xx. No worker runs: both jobs stay queued, so their
streams stay open until the flood is over and the first tenant cancels its job, which ends them."""

import asyncio
import json
import statistics
import threading
import time

import httpx
import pytest

from tests.chaos.harness import Client, figure, service

pytestmark = pytest.mark.chaos

STREAMS = 200
UPLOADS = 3
UPLOAD_LIMIT_MB = 8  # small enough to keep the case short, large enough to take the API a while to parse


def large_jsonl(limit_bytes: int) -> bytes:
    """Valid JSONL rows of about 1 KiB each, filling 90% of the upload limit."""
    filler = " ".join(["Think about it step by step and answer with a number."] * 16)
    lines, size, index = [], 0, 0
    while size < limit_bytes * 0.9:
        line = json.dumps({"prompt": f"What is {index} + 1? {filler}", "answer": index + 1}) + "\n"
        lines.append(line)
        size += len(line)
        index += 1
    return "".join(lines).encode()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def test_a_stream_and_upload_flood_does_not_reach_another_tenant(tmp_path):
    with service(tmp_path, GRPO_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB)) as svc:
        svc.start_api()
        flooder, bystander = Client(svc, "flooder"), Client(svc, "bystander")
        flood_job = flooder.submit(flooder.upload_arithmetic())
        own_job = bystander.submit(bystander.upload_arithmetic())
        content = large_jsonl(UPLOAD_LIMIT_MB * 2**20)

        # The bystander polls from a thread of its own, so the flood's client loop does not time its requests.
        latencies: list[float] = []
        bystander_errors: list[str] = []
        statuses_5xx: list[str] = []
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=svc.base_url, headers=dict(bystander.http.headers), timeout=30) as http:
                while not stop.is_set():
                    for path in (f"/v1/jobs/{own_job}", "/healthz"):
                        started = time.perf_counter()
                        try:
                            response = http.get(path)
                            latencies.append(time.perf_counter() - started)
                            if response.status_code != 200:
                                bystander_errors.append(f"{path}: {response.status_code}")
                            if response.status_code >= 500:
                                statuses_5xx.append(f"bystander {path}: {response.status_code}")
                        except httpx.HTTPError as error:
                            bystander_errors.append(f"{path}: {error!r}")
                    time.sleep(0.02)

        async def flood() -> tuple[list[int], list[int], list[int]]:
            """Open the streams and send the uploads at once; keep the accepted streams open a while, then cancel
            the job, which ends them. Returns the streams' statuses, the uploads' statuses and, for each accepted
            stream, how many events it received before the server ended it."""
            limits = httpx.Limits(max_connections=STREAMS + UPLOADS + 10, max_keepalive_connections=0)
            headers = dict(flooder.http.headers)
            async with httpx.AsyncClient(base_url=svc.base_url, headers=headers, timeout=60, limits=limits) as http:
                stream_statuses: list[int] = []
                events_seen: list[int] = []
                all_answered = asyncio.Event()

                async def stream() -> None:
                    async with http.stream("GET", f"/v1/jobs/{flood_job}/events") as response:
                        stream_statuses.append(response.status_code)
                        if response.status_code == 429:
                            assert response.headers["retry-after"].isdigit()
                        if len(stream_statuses) == STREAMS:
                            all_answered.set()
                        body = await response.aread()  # an accepted stream ends when the job does
                        if response.status_code == 200:
                            events_seen.append(body.count(b"\nevent: "))

                async def upload() -> int:
                    response = await http.post("/v1/datasets", files={"file": ("big.jsonl", content)})
                    return response.status_code

                streams = [asyncio.create_task(stream()) for _ in range(STREAMS)]
                upload_statuses = await asyncio.gather(*(upload() for _ in range(UPLOADS)))
                await asyncio.wait_for(all_answered.wait(), timeout=60)
                await asyncio.sleep(2)  # the accepted streams stay open, polling, while the bystander polls on
                cancelled = await http.post(f"/v1/jobs/{flood_job}/cancel")
                assert cancelled.status_code == 200, cancelled.text
                await asyncio.wait_for(asyncio.gather(*streams), timeout=60)
                return stream_statuses, list(upload_statuses), events_seen

        poller = threading.Thread(target=poll)
        poller.start()
        started = time.monotonic()
        try:
            time.sleep(1)  # the bystander's requests before the flood count too
            stream_statuses, upload_statuses, events_seen = asyncio.run(flood())
            time.sleep(1)
        finally:
            stop.set()
            poller.join()
        seconds = time.monotonic() - started
        statuses_5xx += [f"stream {s}" for s in stream_statuses if s >= 500]
        statuses_5xx += [f"upload {s}" for s in upload_statuses if s >= 500]
        accepted, refused = stream_statuses.count(200), stream_statuses.count(429)
        figure(
            "stream flood",
            bystander_requests=len(latencies),
            bystander_p50_ms=round(percentile(latencies, 50) * 1000, 1),
            bystander_p99_ms=round(percentile(latencies, 99) * 1000, 1),
            bystander_max_ms=round(max(latencies) * 1000, 1),
            bystander_errors=len(bystander_errors),
            streams_opened=len(stream_statuses),
            streams_accepted=accepted,
            streams_429=refused,
            uploads=",".join(map(str, upload_statuses)),
            upload_mib=round(len(content) / 2**20, 2),
            responses_5xx=len(statuses_5xx),
            seconds=round(seconds, 1),
        )
        detail = f"{bystander_errors[:10]} {statuses_5xx[:10]}\n{svc.logs()[-3000:]}"
        assert not bystander_errors and not statuses_5xx, detail
        assert accepted == 8 and refused == STREAMS - 8, stream_statuses  # the default GRPO_MAX_STREAMS_PER_TENANT
        assert upload_statuses == [201] * UPLOADS, upload_statuses
        # Each accepted stream got the job's events (queued, then cancelled) and was ended by the server.
        assert len(events_seen) == accepted and min(events_seen) >= 2, events_seen
        # Every slot came back (each is released just after its stream's last byte): the flooder can open its 8
        # streams again, which now end at once (the job is finished).
        deadline = time.monotonic() + 10
        while (answers := [flooder.http.get(f"/v1/jobs/{flood_job}/events") for _ in range(8)]) and any(
            a.status_code == 429 for a in answers
        ):
            assert time.monotonic() < deadline, [a.status_code for a in answers]
            time.sleep(0.2)
        assert all(a.status_code == 200 and b"cancelled" in a.content for a in answers)
