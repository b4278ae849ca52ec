"""``wsss-label report OUT --serve``: the gallery over a small local HTTP server that saves marks.

Standard library only (:class:`http.server.ThreadingHTTPServer`). What it does and refuses:

- binds 127.0.0.1 only (a free port unless one is given) and answers only requests whose
  ``Host`` is that address (or ``localhost``) at that port, so other machines and web pages
  that rebind a DNS name to 127.0.0.1 get nothing;
- every URL starts with a random token (``secrets.token_urlsafe``): ``/<token>/report/index.html``;
  without it, 403. The token is a path segment, so the page's relative links (thumbnails,
  ``../masks/``) carry it by themselves;
- GET serves files under ``OUT`` and, under ``/<token>/@images/``, the photos of the run's
  image folder (image files only); a path that leaves either folder (``..``, a symbolic link
  out) is refused (403);
- the one thing it writes: ``POST /<token>/review.json`` replaces ``OUT/review.json``,
  atomically, after checking it (JSON, at most :data:`clipseg_cli.review.MAX_BYTES`, the
  review schema, only images of the run); anything else is refused (400/413/415) and nothing
  is written.
"""

from __future__ import annotations

import json
import mimetypes
import os
import secrets
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from clipseg_cli.data.images import IMAGE_EXTENSIONS
from clipseg_cli.review import MAX_BYTES, REVIEW_FILE, Review, ReviewError, now, parse_review, save_review

HOST = "127.0.0.1"
IMAGES_PREFIX = "@images"  # /<token>/@images/<rel>: a photo of the run's image folder
EMPTY_REVIEW: dict[str, Any] = {"tool": "wsss-label", "kind": "review", "version": 1, "marks": {}}


def locate(root: Path, rel: str) -> tuple[HTTPStatus, Path | None]:
    """``root / rel`` if it is a file inside ``root``: (200, path); a path that leaves ``root``
    (a ``..`` segment, a symbolic link out): (403, None); nothing there: (404, None)."""
    if not rel or "\x00" in rel or ".." in rel.split("/") or rel.startswith("/"):
        return (HTTPStatus.NOT_FOUND if not rel else HTTPStatus.FORBIDDEN), None
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError):
        return HTTPStatus.FORBIDDEN, None
    if root not in path.parents:
        return HTTPStatus.FORBIDDEN, None
    return (HTTPStatus.OK, path) if path.is_file() else (HTTPStatus.NOT_FOUND, None)


class ReviewServer(ThreadingHTTPServer):
    """The gallery of ``out`` on 127.0.0.1; see the module's notes. ``url`` is the page."""

    daemon_threads = True

    def __init__(
        self,
        out: str | os.PathLike[str],
        images_root: str | os.PathLike[str] | None,
        known_images: Iterable[str],
        port: int = 0,
        token: str | None = None,
        on_save: Callable[[Review], None] | None = None,
    ) -> None:
        self.out = Path(out).resolve()
        self.images_root = Path(images_root).resolve() if images_root is not None else None
        self.known = frozenset(known_images)
        self.token = token or secrets.token_urlsafe(24)
        self.on_save = on_save
        self.write_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/{self.token}/report/index.html"

    @property
    def review_path(self) -> Path:
        return self.out / REVIEW_FILE

    def save(self, body: bytes) -> Review:
        """Check a posted review.json and write it; ReviewError when it is not acceptable."""
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ReviewError(f"not valid JSON: {exc}") from None
        review = parse_review(data, "the posted review", self.known)
        review.updated_at = now()
        with self.write_lock:
            save_review(self.review_path, review)
        if self.on_save is not None:
            self.on_save(review)
        return review


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "wsss-label-review"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the library prints nothing; the command says what it needs to

    # ---- answers --------------------------------------------------------------------------
    def _headers(self, status: int, content_type: str, length: int, cache_control: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", cache_control)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self._headers(status, content_type, len(body), "no-store")
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status: HTTPStatus, why: str) -> None:
        self._send(status, (why + "\n").encode())

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _file(self, path: Path) -> None:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype == "application/json":
            ctype += "; charset=utf-8"
        try:
            handle = path.open("rb")
        except OSError:
            self._refuse(HTTPStatus.NOT_FOUND, "not found")
            return
        with handle:
            self._headers(HTTPStatus.OK, ctype, os.fstat(handle.fileno()).st_size, "no-cache")
            if self.command != "HEAD":
                shutil.copyfileobj(handle, self.wfile)

    # ---- checks ---------------------------------------------------------------------------
    def _route(self) -> str | None:
        """The path after the token (decoded), or None after refusing the request."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in (f"{HOST}:{self.server.port}", f"localhost:{self.server.port}"):
            self._refuse(HTTPStatus.FORBIDDEN, "forbidden: wrong Host")
            return None
        path = urllib.parse.urlsplit(self.path).path
        first, _, rest = path.lstrip("/").partition("/")
        if not secrets.compare_digest(first.encode(), self.server.token.encode()):
            self._refuse(HTTPStatus.FORBIDDEN, "forbidden: the URL needs the token the command printed")
            return None
        return urllib.parse.unquote(rest)

    # ---- methods --------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        rel = self._route()
        if rel is None:
            return
        if rel in ("", "report", "report/"):
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", f"/{self.server.token}/report/index.html")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rel == REVIEW_FILE and not self.server.review_path.is_file():
            self._json(HTTPStatus.OK, EMPTY_REVIEW)
            return
        head, _, photo = rel.partition("/")
        if head == IMAGES_PREFIX:  # a photo of the image folder
            root = self.server.images_root
            status, target = locate(root, photo) if root is not None else (HTTPStatus.NOT_FOUND, None)
            if target is not None and target.suffix.lower() not in IMAGE_EXTENSIONS:
                status, target = HTTPStatus.FORBIDDEN, None
        else:
            status, target = locate(self.server.out, rel)
        if target is None:
            self._refuse(status, "forbidden: outside the run" if status == HTTPStatus.FORBIDDEN else "not found")
            return
        self._file(target)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        rel = self._route()
        if rel is None:
            return
        if rel != REVIEW_FILE:
            self._refuse(HTTPStatus.FORBIDDEN, f"forbidden: only {REVIEW_FILE} is written")
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (f"http://{HOST}:{self.server.port}", f"http://localhost:{self.server.port}"):
            self._refuse(HTTPStatus.FORBIDDEN, "forbidden: another origin")
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length needed")
            return
        if length < 0 or length > MAX_BYTES:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a review is at most {MAX_BYTES} bytes")
            return
        body = self.rfile.read(length)
        try:
            review = self.server.save(body)
        except ReviewError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except OSError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot write {REVIEW_FILE}: {exc.strerror or exc}"})
            return
        self._json(HTTPStatus.OK, {"saved": len(review.marks), "counts": review.counts(), "updated_at": review.updated_at})
