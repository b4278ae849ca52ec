"""`wsss-label report OUT --serve`: the local server over real HTTP on 127.0.0.1, and review.json.

The server runs in a thread of the test (the library's ReviewServer) for the HTTP checks, and
once as the real command in a subprocess that Ctrl-C (SIGINT) stops.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.report import build
from clipseg_cli.report.serve import ReviewServer
from clipseg_cli.review import MAX_BYTES, Review, ReviewError, load_review, parse_review
from tests.test_report_data import fake_run

IMAGES = ["a/one.jpg", "a/two.jpg", "three.png"]


def _run(tmp_path: Path) -> Path:
    specs = {}
    for k, rel in enumerate(IMAGES):
        mask = np.zeros((8, 10), np.uint8)
        mask[2:6, 3:7] = 1 + k % 3
        specs[rel] = {"mask": mask, "labels": [["cat", "dog", "person"][k % 3]]}
    out = fake_run(tmp_path, specs)
    build(out, workers=1)
    return out


@pytest.fixture
def served(tmp_path: Path):
    out = _run(tmp_path)
    (tmp_path / "images" / "notes.txt").write_text("not a photo")
    (tmp_path / "secret.txt").write_text("SECRET-42")
    server = ReviewServer(out, tmp_path / "images", IMAGES)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _request(server: ReviewServer, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=headers is not None and "Host" in headers)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            if "Content-Length" not in (headers or {}):
                conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            conn.send(body)
        res = conn.getresponse()
        return res.status, res.read(), dict(res.getheaders())
    finally:
        conn.close()


def _review(marks: dict) -> bytes:
    return json.dumps({"tool": "wsss-label", "kind": "review", "version": 1, "marks": marks}).encode()


JSON = {"Content-Type": "application/json"}


def test_binds_loopback_and_needs_the_token(served: ReviewServer) -> None:
    assert served.server_address[0] == "127.0.0.1" and served.port > 0
    assert len(served.token) >= 32  # token_urlsafe(24): 192 random bits
    status, body, headers = _request(served, "GET", f"/{served.token}/report/index.html")
    assert status == 200 and body.startswith(b"<!doctype html>") and headers["Content-Type"].startswith("text/html")
    assert _request(served, "GET", "/report/index.html")[0] == 403  # no token
    wrong = served.token[:-1] + ("a" if served.token[-1] != "a" else "b")  # one character off
    assert _request(served, "GET", f"/{wrong}/report/index.html")[0] == 403
    assert _request(served, "GET", "/")[0] == 403
    assert _request(served, "POST", "/review.json", _review({}), JSON)[0] == 403
    # Another Host (a DNS name rebound to 127.0.0.1) gets nothing, token or not.
    evil = {"Host": f"evil.example:{served.port}"}
    assert _request(served, "GET", f"/{served.token}/report/index.html", headers=evil)[0] == 403
    # The page's relative links work under the token: a thumbnail, a mask, a photo.
    assert _request(served, "GET", f"/{served.token}/report/thumbs/a/one.jpg")[0] == 200
    assert _request(served, "GET", f"/{served.token}/masks/a/one.png")[0] == 200
    status, body, _ = _request(served, "GET", f"/{served.token}/@images/a/one.jpg")
    assert status == 200 and body == (served.images_root / "a" / "one.jpg").read_bytes()


def test_no_path_leaves_the_run_or_the_image_folder(served: ReviewServer, tmp_path: Path) -> None:
    t = served.token
    for path in (f"/{t}/../secret.txt", f"/{t}/%2e%2e/secret.txt", f"/{t}/masks/../../secret.txt",
                 f"/{t}/@images/../secret.txt", f"/{t}/@images/%2E%2E/secret.txt"):  # fmt: skip
        status, body, _ = _request(served, "GET", path)
        assert status == 403, path
        assert b"SECRET-42" not in body
    # A symbolic link inside OUT that points out of it is refused too.
    (served.out / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert _request(served, "GET", f"/{t}/link.txt")[0] == 403
    # The image folder gives photos only.
    assert _request(served, "GET", f"/{t}/@images/notes.txt")[0] == 403
    assert _request(served, "GET", f"/{t}/report/nothing.png")[0] == 404


def test_posting_marks(served: ReviewServer) -> None:
    t, dest = served.token, served.review_path
    # Before any mark: an empty review (no 404 in the page's console).
    status, body, _ = _request(served, "GET", f"/{t}/review.json")
    assert status == 200 and json.loads(body)["marks"] == {}

    refused = [
        (f"/{t}/review.json", b"{not json", JSON, 400),
        (f"/{t}/review.json", json.dumps({"kind": "other"}).encode(), JSON, 400),
        (f"/{t}/review.json", _review({"a/one.jpg": {"mark": "maybe"}}), JSON, 400),
        (f"/{t}/review.json", _review({"not/in/run.jpg": {"mark": "rejected"}}), JSON, 400),
        (f"/{t}/review.json", _review({"../x.jpg": {"mark": "rejected"}}), JSON, 400),
        (f"/{t}/review.json", _review({"a/one.jpg": {"mark": "fix", "note": "x" * 2001}}), JSON, 400),
        (f"/{t}/review.json", _review({}), {"Content-Type": "text/plain"}, 415),
        (f"/{t}/review.json", _review({}), {**JSON, "Origin": "https://evil.example"}, 403),
        (f"/{t}/run.json", _review({}), JSON, 403),  # nothing else is written
        (f"/{t}/report/index.html", _review({}), JSON, 403),
    ]
    for path, body, headers, want in refused:
        status, answer, _ = _request(served, "POST", path, body, headers)
        assert status == want, (path, body[:60], answer)
        assert not dest.exists()
    big = {**JSON, "Content-Length": str(MAX_BYTES + 1)}
    assert _request(served, "POST", f"/{t}/review.json", b"{}", big)[0] == 413
    assert not dest.exists()
    run_json = (served.out / "run.json").read_bytes()

    marks = {"a/one.jpg": {"mark": "rejected", "note": "tail cut off"}, "three.png": {"mark": "accepted"}}
    status, body, _ = _request(served, "POST", f"/{t}/review.json", _review(marks), {**JSON, "Origin": f"http://127.0.0.1:{served.port}"})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["saved"] == 2 and answer["counts"] == {"accepted": 1, "rejected": 1, "fix": 0}
    saved = json.loads(dest.read_text())
    assert saved["kind"] == "review" and saved["marks"] == marks and saved["updated_at"]
    first_inode = dest.stat().st_ino
    # A second save replaces the file by renaming a new one onto it (atomic): a new inode, no leftovers.
    marks["a/two.jpg"] = {"mark": "fix"}
    assert _request(served, "POST", f"/{t}/review.json", _review(marks), JSON)[0] == 200
    assert dest.stat().st_ino != first_inode
    assert sorted(p.name for p in served.out.iterdir() if p.name.endswith(".part")) == []
    assert load_review(dest, IMAGES).images("rejected", "fix") == ["a/one.jpg", "a/two.jpg"]
    status, body, _ = _request(served, "GET", f"/{t}/review.json")
    assert json.loads(body)["marks"] == marks
    assert (served.out / "run.json").read_bytes() == run_json  # the only file written is review.json


def test_parse_review_checks_the_schema() -> None:
    good = {"kind": "review", "version": 1, "marks": {"a/one.jpg": {"mark": "fix", "note": "n", "at": "2026-01-01T00:00:00Z"}}}
    review = parse_review(good, known=IMAGES)
    assert review.marks["a/one.jpg"].mark == "fix" and review.stems("fix") == {"a/one"}
    bad = [
        ([], "not a review file"),
        ({"kind": "review", "version": 2, "marks": {}}, "version 2"),
        ({"kind": "review", "version": True, "marks": {}}, "positive integer"),
        ({"kind": "review", "version": 1, "marks": []}, "must be an object"),
        ({"kind": "review", "version": 1, "marks": {"/etc/passwd": {"mark": "fix"}}}, "not a path inside"),
        ({"kind": "review", "version": 1, "marks": {"a/one.jpg": {"mark": "fix", "note": 3}}}, "note"),
        (
            {"kind": "review", "version": 1, "marks": {"x.jpg": {"mark": "fix"}, "y.jpg": {"mark": "fix"}}},
            "2 marked image(s) are not images of the run",
        ),
    ]
    for data, message in bad:
        with pytest.raises(ReviewError, match=re.escape(message)):
            parse_review(data, known=IMAGES)
    assert Review().counts() == {"accepted": 0, "rejected": 0, "fix": 0}


def test_serve_command_prints_the_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out = _run(tmp_path)
    env = {**os.environ, "WSSS_LABEL_PROGRESS": "plain", "COLUMNS": "300"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipseg_cli", "report", str(out), "--serve", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+)", line)
            if found:
                url = found
        assert url is not None, "".join(lines)
        conn = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=10)
        conn.request("GET", url.group(2))
        res = conn.getresponse()
        assert res.status == 200 and b"review-box" in res.read()
        conn.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    tail = [line for line in err.splitlines() if line.strip()]
    assert tail[-1] == "stopped; no marks saved" and "Traceback" not in err
