"""Where CLIP weights come from: a registry of published files with SHA-256, a cache, a download."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipseg_cli.errors import WeightsError
from clipseg_cli.io.atomic import atomic_path

ENV_WEIGHTS = "WSSS_LABEL_WEIGHTS"


@dataclass(frozen=True)
class PretrainedFile:
    name: str
    filename: str
    url: str
    sha256: str


OPENAI_VIT_B_16 = PretrainedFile(
    name="ViT-B/16",
    filename="ViT-B-16.pt",
    url="https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
)

REGISTRY = {OPENAI_VIT_B_16.name: OPENAI_VIT_B_16}
DEFAULT_MODEL = OPENAI_VIT_B_16


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsss-label"


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


ProgressHook = Callable[[int, int | None], None]


def download(spec: PretrainedFile, dest: Path, progress: ProgressHook | None = None, timeout: float = 30.0) -> Path:
    """Fetch ``spec.url`` to ``dest`` atomically, checking its SHA-256 before it appears."""
    hint = f"download {spec.url} yourself and put it at {dest} (or pass --weights PATH)"
    digest = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(spec.url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = response.headers.get("Content-Length")
                total_bytes = int(total) if total and total.isdigit() else None
                done = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total_bytes)
            if digest.hexdigest() != spec.sha256:
                raise WeightsError(f"checksum mismatch for the downloaded {spec.name} weights; {hint}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise WeightsError(f"cannot download {spec.name} weights ({exc}); {hint}") from None
    return dest


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str


def resolve_weights(explicit: str | Path | None, progress: ProgressHook | None = None) -> ResolvedWeights:
    """--weights, else $WSSS_LABEL_WEIGHTS, else the cached ViT-B/16 (downloaded if absent).

    A user-chosen file may be any ViT CLIP; the cached default must match its published SHA-256.
    """
    chosen = explicit or os.environ.get(ENV_WEIGHTS)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise WeightsError(f"CLIP weights not found: {path}")
        return ResolvedWeights(path, sha256_of(path))
    dest = cache_dir() / DEFAULT_MODEL.filename
    if not dest.is_file():
        download(DEFAULT_MODEL, dest, progress)
    digest = sha256_of(dest)
    if digest != DEFAULT_MODEL.sha256:
        raise WeightsError(
            f"{dest} does not have the published SHA-256 of {DEFAULT_MODEL.name}; "
            f"replace it with {DEFAULT_MODEL.url} (or pass --weights PATH)"
        )
    return ResolvedWeights(dest, digest)
