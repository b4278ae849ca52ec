"""Where weights come from: --weights, $WSSS_LABEL_WEIGHTS, the cache, a checked download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clipseg_cli.clip import pretrained
from clipseg_cli.clip.pretrained import PretrainedFile, resolve_weights
from clipseg_cli.errors import WeightsError
from tests.conftest import make_image, write_labels


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("WSSS_LABEL_WEIGHTS", raising=False)
    return tmp_path / "xdg" / "wsss-label"


def _serve(monkeypatch: pytest.MonkeyPatch, source: Path, sha256: str) -> None:
    spec = PretrainedFile("ViT-B/16", "ViT-B-16.pt", source.resolve().as_uri(), sha256)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", spec)


def test_published_checksum_and_url_are_openais() -> None:
    spec = pretrained.REGISTRY["ViT-B/16"]
    assert spec.sha256 == "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    assert spec.url.endswith(f"/{spec.sha256}/ViT-B-16.pt")


def test_explicit_path_then_environment(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    monkeypatch.setenv("WSSS_LABEL_WEIGHTS", str(b))
    assert resolve_weights(a).path == a
    resolved = resolve_weights(None)
    assert resolved.path == b and resolved.sha256 == hashlib.sha256(b"b").hexdigest()


def test_download_is_checked_and_cached(golden_weights: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(golden_weights.read_bytes()).hexdigest()
    _serve(monkeypatch, golden_weights, digest)
    seen: list[int] = []
    resolved = resolve_weights(None, progress=lambda done, total: seen.append(done))
    assert resolved.path == cache / "ViT-B-16.pt" and resolved.sha256 == digest
    assert seen[-1] == golden_weights.stat().st_size
    assert not list(cache.glob(".*.part"))


def test_checksum_mismatch_leaves_no_file(golden_weights: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, golden_weights, "0" * 64)
    with pytest.raises(WeightsError, match="checksum mismatch.*put it at"):
        resolve_weights(None)
    assert not cache.exists() or not any(cache.iterdir())


def test_cached_file_with_wrong_checksum_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir(parents=True)
    (cache / "ViT-B-16.pt").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="published SHA-256"):
        resolve_weights(None)


def test_offline_run_exits_2_with_one_line(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    spec = PretrainedFile("ViT-B/16", "ViT-B-16.pt", "http://127.0.0.1:9/ViT-B-16.pt", "0" * 64)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", spec)
    make_image(tmp_path / "imgs" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    result = cli(tmp_path / "imgs", "--labels", labels, "--out", tmp_path / "out")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot download" in lines[0] and str(cache / "ViT-B-16.pt") in lines[0]
    assert not (tmp_path / "out" / "masks").exists()
