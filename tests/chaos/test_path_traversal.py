"""Case 9: path traversal against a live API. Payloads in every id and step path segment (dot-dot in its encodings,
absolute paths, NUL bytes, backslashes), sent as raw request targets over a socket so no client normalises them;
symlinks planted in the artifacts folder pointing out of it; uploads with hostile filenames. Nothing from outside
the artifacts folder may be served, every such request answers 4xx, and uploads land only under the artifacts
folder with names the server made.

Run on SQLite and PostgreSQL: PostgreSQL refuses NUL bytes in text, so an id like `%00` reaching a query there is
a 500 rather than a 404 unless ids are checked before any lookup."""

import json
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.chaos.harness import Client, figure, service
from tests.chaos.planted import artifacts_dir, plant_checkpoints

pytestmark = pytest.mark.chaos

SECRET = b"chaos-outside-secret-7f3a: this file is outside the artifacts folder\n"
ID_ROUTES = [
    ("GET", "/v1/datasets/{id}"),
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/metrics"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/jobs/{id}/checkpoints"),
    ("GET", "/v1/jobs/{id}/checkpoints/1/adapter"),
    ("GET", "/v1/jobs/{id}/adapter"),
]
DOT_DOTS = [
    "../",
    "..%2f",
    "..%2F",
    "%2e%2e%2f",
    "%2e%2e/",
    "....//",
    "..%5c",
    "..\\",
    "%252e%252e%252f",
    "..%c0%af",
    "..;/",
]
SERVER_ID = re.compile(r"^ds_[0-9a-f]{32}$")


def raw_request(base_url: str, method: str, target: bytes, headers: dict[str, str], body: bytes = b"") -> tuple:
    """One HTTP/1.1 request with `target` sent byte for byte (no client normalises dots or encodings away).
    Returns (status, headers, body); an event stream is read for at most a few seconds."""
    parts = urlsplit(base_url)
    head = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {parts.netloc}".encode(), b"Connection: close"]
    head += [f"{k}: {v}".encode() for k, v in headers.items()]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}".encode())
    data = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and len(data) < 20 * 2**20:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    status_line, _, rest = data.partition(b"\r\n")
    header_blob, _, content = rest.partition(b"\r\n\r\n")
    response_headers = {}
    for line in header_blob.split(b"\r\n"):
        name, _, value = line.partition(b":")
        response_headers[name.strip().lower().decode()] = value.strip().decode(errors="replace")
    if response_headers.get("transfer-encoding") == "chunked":
        content = _dechunk(content)
    return int(status_line.split()[1]), response_headers, content


def fetch(base_url: str, method: str, target: bytes, headers: dict[str, str]) -> tuple[int, bytes, int]:
    """raw_request, following redirects to this same API as sent (Starlette answers a path ending in "/" with a
    307 to the path without it: "/v1/jobs/..%2f" redirects to "/v1/jobs/.."). Returns (final status, final body,
    redirects followed); a redirect elsewhere is returned as it is, and fails the 4xx check."""
    redirects = 0
    while True:
        status, response_headers, body = raw_request(base_url, method, target, headers)
        location = response_headers.get("location", "")
        if status not in (301, 302, 303, 307, 308) or redirects >= 5 or not location.startswith(base_url + "/"):
            return status, body, redirects
        target, redirects = location[len(base_url) :].encode("latin-1"), redirects + 1


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def id_payloads(job_id: str, secret: Path) -> list[str]:
    """Raw path-segment payloads standing where an id goes."""
    payloads = []
    for dots in DOT_DOTS:
        payloads += [dots, dots * 12 + "etc/passwd", dots * 12 + "etc%2fpasswd", dots * 6 + secret.name]
    payloads += [
        "..",
        ".",
        "%2e%2e",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "//etc/passwd",
        quote(str(secret), safe=""),
        str(secret),
        "%00",
        "\x00",
        f"{job_id}%00",
        f"{job_id}%00.tar.gz",
        "..%00/etc/passwd",
        f"{job_id}/../../../../../../etc/passwd",
        f"{job_id}%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"{job_id}/checkpoints/step-000001/adapter.tar.gz",
        f"..%2f{job_id}",
        f"{job_id}\\..\\..\\..\\..\\etc\\passwd",
        "C:\\Windows\\win.ini",
        "file:%2f%2f%2fetc%2fpasswd",
        "~%2f.ssh%2fid_rsa",
        "x" * 5000,
    ]
    return payloads


def step_payloads() -> list[str]:
    payloads = [
        "../1",
        "..%2f1",
        "1%2f..%2f..%2f..",
        "%2e%2e",
        "..",
        "1%00",
        "%00",
        "1\\..\\2",
        "/etc/passwd",
        "1/../2",
    ]
    payloads += [dots * 8 + "etc%2fpasswd" for dots in ("..%2f", "%2e%2e%2f", "..%5c")]
    payloads += ["step-000001%2fadapter.tar.gz", "..%2f..%2f..%2f..%2f..%2f..%2f" + "outside-secret.txt"]
    return payloads


def leaked(body: bytes, targets: dict[str, bytes]) -> list[str]:
    return [name for name, marker in targets.items() if marker and marker in body]


def multipart(filename: bytes, content: bytes, disposition_extra: bytes = b"") -> tuple[bytes, str]:
    boundary = "chaos9boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"'
        + disposition_extra
        + b"\r\nContent-Type: application/jsonl\r\n\r\n"
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_no_file_outside_the_artifacts_folder_is_served(database, tmp_path):
    secret = tmp_path / "outside-secret.txt"
    secret.write_bytes(SECRET)
    passwd = Path("/etc/passwd").read_bytes()
    passwd_stat = os.stat("/etc/passwd")
    with service(tmp_path, database=database) as svc:
        svc.start_api()
        client = Client(svc, "traversal")
        auth = {"Authorization": client.http.headers["Authorization"]}
        dataset_id = client.upload_arithmetic()
        job_id = client.submit(dataset_id)
        planted = plant_checkpoints(svc, job_id, [1, 2, 3, 4, 5, 6])
        root = artifacts_dir(svc)
        targets = {"/etc/passwd": passwd[:64], "outside secret": SECRET[:32]}
        if database == "sqlite":
            targets["sqlite database"] = b"SQLite format 3\x00"

        # 1. Payloads in the id and step segments of every route that takes one.
        results, redirects = [], 0  # (what, final status, final body), 307s followed on the way
        ids = id_payloads(job_id, secret)
        for payload in ids:
            for method, template in ID_ROUTES:
                target = template.replace("{id}", payload).encode("latin-1")
                status, body, hops = fetch(svc.base_url, method, target, auth)
                redirects += hops
                results.append((f"{method} {template} id={payload[:60]!r}", status, body))
        steps = step_payloads()
        for payload in steps:
            target = f"/v1/jobs/{job_id}/checkpoints/{payload}/adapter".encode("latin-1")
            status, body, hops = fetch(svc.base_url, "GET", target, auth)
            redirects += hops
            results.append((f"GET checkpoint step={payload!r}", status, body))

        # 2. Links planted in the artifacts folder by someone who can write there.
        outside_dir = tmp_path / "outside-folder"
        outside_dir.mkdir()
        (outside_dir / "adapter.tar.gz").write_bytes(SECRET)
        planted[2]["path"].unlink()
        planted[2]["path"].symlink_to(secret)  # the archive itself, to a file outside
        planted[3]["path"].unlink()
        planted[3]["path"].symlink_to("/etc/passwd")
        step4_dir = planted[4]["path"].parent  # a whole checkpoint folder, to a folder outside
        for child in step4_dir.iterdir():
            child.unlink()
        step4_dir.rmdir()
        step4_dir.symlink_to(outside_dir, target_is_directory=True)
        planted[5]["path"].unlink()
        planted[5]["path"].symlink_to(tmp_path / "no-such-file")  # dangling
        planted[6]["path"].unlink()  # missing: the row says step 6 exists, the archive is gone
        planted_links = {
            2: "archive -> outside file",
            3: "archive -> /etc/passwd",
            4: "checkpoint folder -> outside folder",
            5: "archive -> nothing (dangling)",
            6: "archive deleted",
        }
        for step, what in planted_links.items():
            status, _, body = raw_request(
                svc.base_url, "GET", f"/v1/jobs/{job_id}/checkpoints/{step}/adapter".encode(), auth
            )
            results.append((f"planted step {step}: {what}", status, body))
        # The latest checkpoint (6) is what /adapter serves; point it outside too, then ask for "latest".
        planted[6]["path"].symlink_to(secret)
        status, _, body = raw_request(svc.base_url, "GET", f"/v1/jobs/{job_id}/adapter".encode(), auth)
        results.append(("planted latest: archive -> outside file", status, body))

        # An untouched checkpoint still downloads, byte for byte (the refusal is not blanket).
        status, headers, body = raw_request(
            svc.base_url, "GET", f"/v1/jobs/{job_id}/checkpoints/1/adapter".encode(), auth
        )
        genuine_ok = (
            status == 200
            and body == planted[1]["path"].read_bytes()
            and headers.get("x-checksum-sha256") == planted[1]["sha256"]
        )

        # 3. Uploads with hostile filenames: stored under the dataset id, the name kept only as a label.
        before = files_under(tmp_path) - files_under(root)
        content = b'{"prompt": "What is 1 + 1?", "answer": 2}\n'
        names = [
            b"../../etc/passwd",
            b"/etc/passwd",
            b"..%2f..%2fx",
            b"..\\..\\windows\\win.ini",
            b"a\x00b.jsonl",
            b"../\x00../x.jsonl",
            b"../" * 40 + b"outside.jsonl",
            b"A" * 5000 + b".jsonl",
            b"",
            b".",
            b"..",
            str(tmp_path / "uploaded-outside.jsonl").encode(),
        ]
        uploads = []
        for name in names:
            body, content_type = multipart(name, content)
            uploads.append(
                (
                    name,
                    *raw_request(svc.base_url, "POST", b"/v1/datasets", {**auth, "Content-Type": content_type}, body),
                )
            )
        body, content_type = multipart(b"x.jsonl", content, b"; filename*=UTF-8''..%2F..%2F..%2Fetc%2Fpasswd")
        uploads.append(
            (
                b"filename*=..%2F..%2Fetc%2Fpasswd",
                *raw_request(svc.base_url, "POST", b"/v1/datasets", {**auth, "Content-Type": content_type}, body),
            )
        )
        after = files_under(tmp_path) - files_under(root)
        stray = {p for p in after - before if not p.name.startswith("grpo.db")}  # SQLite may add its journal

        upload_problems, refused, stored_count = [], 0, 0
        for name, status, _, body in uploads:
            if 400 <= status < 500:  # refusing a hostile name is fine too
                refused += 1
                continue
            if status != 201:
                upload_problems.append((name[:60], status, body[:200]))
                continue
            stored_count += 1
            dataset = json.loads(body)
            stored = root / "datasets" / f"{dataset['id']}.jsonl"
            label = dataset["name"]
            if not (
                SERVER_ID.match(dataset["id"])
                and stored.is_file()
                and stored.read_bytes() == content
                and not stored.is_symlink()
                and not any(c in label for c in "/\\\x00")
                and len(label) <= 200
            ):
                upload_problems.append((name[:60], status, label[:80]))
        dataset_files = sorted(p.name for p in (root / "datasets").iterdir())
        job = client.job(job_id)

        served_outside = [(what, status, hits) for what, status, body in results if (hits := leaked(body, targets))]
        not_4xx = [(what, status) for what, status, _ in results if not 400 <= status < 500]
        server_errors = [(what, status) for what, status, _ in results if status >= 500]
        figure(
            f"9 path traversal ({database})",
            payloads=len(ids) + len(steps) + len(planted_links) + 1 + len(names) + 1,
            requests=len(results) + len(uploads),
            files_served_from_outside=len(served_outside),
            traversal_requests_not_4xx=len(not_4xx),
            redirects_followed_to_a_4xx=redirects,
            server_errors=len(server_errors),
            planted_links_refused=sum(1 for what, s, _ in results if what.startswith("planted") and 400 <= s < 500),
            planted_links=len(planted_links) + 1,
            genuine_checkpoint_served=genuine_ok,
            hostile_uploads=len(uploads),
            uploads_stored=stored_count,
            uploads_refused_4xx=refused,
            uploads_off_artifacts_or_unsafe_name=len(upload_problems),
            stray_files_outside_artifacts=len(stray),
            job_still_queued=job["status"] == "queued",
        )
        detail = f"{served_outside[:5]} {not_4xx[:10]} {upload_problems[:5]} {stray}\n{svc.logs()[-3000:]}"
        assert not served_outside, detail
        assert not not_4xx, detail
        assert genuine_ok, detail
        assert not upload_problems and not stray, detail
        assert len(dataset_files) == 1 + stored_count and all(
            re.fullmatch(r"ds_[0-9a-f]{32}\.jsonl", n) for n in dataset_files
        ), dataset_files
        assert job["status"] == "queued"  # no payload reached the cancel of the real job
        assert Path("/etc/passwd").read_bytes() == passwd and os.stat("/etc/passwd").st_mtime == passwd_stat.st_mtime
        assert secret.read_bytes() == SECRET
