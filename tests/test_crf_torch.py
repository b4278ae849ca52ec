"""The torch dense CRF against pydensecrf (parity), a brute-force Gaussian and hand-computed mean field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipseg_cli.cam.normalize import resize_maps
from clipseg_cli.cam.pipeline import CLIPESSettings, mask_from_refined
from clipseg_cli.data.images import load_rgb
from clipseg_cli.errors import ConfigError
from clipseg_cli.postprocess.crf import CRFParams, dense_crf, resolve_crf_backend
from clipseg_cli.postprocess.crf_torch import build_lattice, dense_crf_torch, dense_crf_torch_batch
from tests.conftest import ROOT
from tests.test_golden import expected_map

MASK_AGREEMENT = 0.995
CONFIDENCE_TOL = 1e-2
EXAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _crf_masks(image: np.ndarray, refined: np.ndarray, labels: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mask, confidence) from the pipeline's CRF step with each backend."""
    return {
        backend: mask_from_refined(image, refined, labels, CLIPESSettings(crf_backend=backend))  # type: ignore[misc]
        for backend in ("pydensecrf", "torch")
    }


def _assert_parity(results: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    (mask_ref, conf_ref), (mask, conf) = results["pydensecrf"], results["torch"]
    assert mask.dtype == mask_ref.dtype and mask.shape == mask_ref.shape
    assert (mask == mask_ref).mean() >= MASK_AGREEMENT
    assert np.abs(conf - conf_ref).max() <= CONFIDENCE_TOL


@pytest.mark.parametrize("stem", ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"])
def test_golden_crf_inputs_give_pydensecrf_masks(golden_dir: Path, stem: str) -> None:
    """The golden run's refined CAMs (kept at every second pixel) on the image at those pixels."""
    labels = [int(c) for c in np.load(golden_dir / "expected" / f"{stem}.npz")["labels"]]
    refined = expected_map(np.load(golden_dir / "expected" / f"{stem}.npz"), "refined").astype(np.float32)
    image = np.ascontiguousarray(load_rgb(golden_dir / "images" / f"{stem}.png")[::2, ::2])
    assert image.shape[:2] == refined.shape[1:]
    _assert_parity(_crf_masks(image, refined, labels))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_photos_give_pydensecrf_masks(path: Path) -> None:
    """Real photos with CAM-like inputs: a random 16-pixel grid, bilinearly upsampled, min-max normalised."""
    image = load_rgb(path)
    height, width = image.shape[:2]
    rng = np.random.default_rng(len(path.stem))
    grid = rng.random((3, height // 16 + 1, width // 16 + 1)).astype(np.float32) ** 3
    refined = resize_maps(grid, height, width)
    refined = (refined - refined.min(axis=(1, 2), keepdims=True)) / np.ptp(refined, axis=(1, 2), keepdims=True)
    _assert_parity(_crf_masks(image, refined, [7, 11, 14]))


def _densecrf_kernel(features: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pydensecrf's normalised kernel D^-1/2 L D^-1/2 applied to x, read off one mean-field step.

    With 2 labels, Potts weight 1 and Q0 = softmax(-unary): log(Q1_0 / Q1_1) = -(u_0 - u_1) + K(Q0_0 - Q0_1).
    Returns (K(x'), x') where x' = Q0_0 - Q0_1 as pydensecrf computed it (x up to float32).
    """
    import pydensecrf.densecrf as dcrf

    half = np.arctanh(x).astype(np.float32)
    unary = np.ascontiguousarray(np.stack([-half, half]))
    crf = dcrf.DenseCRF(features.shape[0], 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseEnergy(np.ascontiguousarray(features.T, dtype=np.float32), compat=1.0)
    q0 = np.asarray(crf.inference(0), dtype=np.float64)
    q1 = np.asarray(crf.inference(1), dtype=np.float64)
    return np.log(q1[0] / q1[1]) + (unary[0] - unary[1]), q0[0] - q0[1]


def _normalised_filter(features: np.ndarray, x: np.ndarray, pack: bool = True) -> np.ndarray:
    lattice = build_lattice(torch.from_numpy(features), pack=pack)
    norm = 1.0 / torch.sqrt(lattice.filter(torch.ones(1, features.shape[0])) + 1e-20)
    return (norm * lattice.filter(norm * torch.from_numpy(x).float()[None]))[0].double().numpy()


def _rounding_ties(count: int) -> np.ndarray:
    """1-d float32 features that land exactly halfway between two remainder-0 lattice points
    (elevated / 2 = k + 1/2), where densecrf's SSE rounding goes to the even one."""
    scale = float(np.float32(np.sqrt(2.0 / 3.0) * 2)) / np.sqrt(2.0)  # densecrf's scale factor for d = 1
    ties = []
    for k in range(count):
        guess = np.float32((2 * k + 1) / scale)
        for f in (np.nextafter(guess, np.float32(-1)), guess, np.nextafter(guess, np.float32(1e9))):
            if np.float32(f) * np.float32(scale) == 2 * k + 1:
                ties.append(f)
                break
    return np.array(ties, dtype=np.float32)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_lattice_filter_is_densecrfs(d: int) -> None:
    """Random features (with duplicated points, integer points and, for d = 1, exact rounding
    ties) filtered like pydensecrf filters them, to float32 precision."""
    rng = np.random.default_rng(d)
    features = (rng.random((300, d)) * 4).astype(np.float32)
    features[:20] = features[20:40]
    features[40:60] = np.round(features[40:60])
    if d == 1:
        ties = _rounding_ties(40)
        assert len(ties) >= 20
        features[60 : 60 + len(ties), 0] = ties / 10  # the features are spread 10x wider below
        features *= 10
    expected, x = _densecrf_kernel(features, rng.uniform(-0.9, 0.9, 300))
    assert np.abs(expected).max() > 0.05  # the kernel does something measurable here
    np.testing.assert_allclose(_normalised_filter(features, x), expected, atol=2e-6)


def test_row_keys_give_the_packed_lattice() -> None:
    """The fallback for key ranges too wide for int64 packing builds the same lattice."""
    rng = np.random.default_rng(3)
    features = (rng.random((200, 5)) * 5).astype(np.float32)
    x = rng.uniform(-1, 1, 200)
    np.testing.assert_array_equal(_normalised_filter(features, x, pack=False), _normalised_filter(features, x))


@pytest.mark.parametrize("d", [2, 3, 5])
def test_lattice_approximates_a_unit_gaussian(d: int) -> None:
    """Normalised lattice filtering vs exact exp(-|fi - fj|^2 / 2) averaging on a smooth signal.

    The permutohedral lattice only approximates the Gaussian (Adams et al. 2010): we ask for a
    small mean error, and that sigma = 1 fits better than 0.8 or 1.25 (a scaling slip would not)."""
    g = torch.Generator().manual_seed(d)
    features = torch.rand(1500, d, generator=g) * (6.0 if d < 5 else 3.0)
    signal = torch.sin(features.sum(dim=1)).double()
    lattice = build_lattice(features)
    ours = (lattice.filter(signal.float()[None]) / lattice.filter(torch.ones(1, 1500)))[0].double()
    squared = ((features[:, None].double() - features[None].double()) ** 2).sum(-1)

    def error(sigma: float) -> float:
        weights = torch.exp(-squared / (2 * sigma**2))
        return float((ours - weights @ signal / weights.sum(1)).abs().mean())

    assert error(1.0) < 0.03
    assert error(1.0) < min(error(0.8), error(1.25))


def _mean_field_by_hand(probs: np.ndarray, iterations: int, coupled: float, alone: float) -> np.ndarray:
    """Q <- softmax(-unary + coupled * mean over pixels of Q + alone * Q), unary = -log(clip(p))."""
    unary = -np.log(np.clip(probs.astype(np.float64), 1e-5, 1.0))
    q = np.exp(-unary) / np.exp(-unary).sum(axis=0)
    for _ in range(iterations):
        energy = -unary + coupled * q.mean(axis=(1, 2), keepdims=True) + alone * q
        q = np.exp(energy - energy.max(axis=0)) / np.exp(energy - energy.max(axis=0)).sum(axis=0)
    return q


@pytest.mark.parametrize("iterations", [0, 1, 10])
def test_mean_field_on_two_pixels_by_hand(iterations: int) -> None:
    """Two pixels where the lattice is exact: the Gaussian term sees them at one point (sxy huge:
    K = their mean, as an exact Gaussian with exp(0) = 1 gives), the bilateral term far apart
    (colours differ, srgb tiny: K = identity). So Q <- softmax(-u + 3 * mean(Q) + 4 * Q)."""
    image = np.array([[[10, 200, 30], [240, 20, 90]]], dtype=np.uint8)
    probs = np.array([[[0.7, 0.2]], [[0.25, 0.3]], [[0.05, 0.5]]], dtype=np.float32)
    params = CRFParams(iterations=iterations, gaussian_sxy=1e6, bilateral_sxy=1e-3, bilateral_srgb=1e-3)
    q = dense_crf_torch(torch.from_numpy(image), torch.from_numpy(probs), params)
    expected = _mean_field_by_hand(probs, iterations, coupled=params.gaussian_compat, alone=params.bilateral_compat)
    np.testing.assert_allclose(q.numpy(), expected, atol=1e-5)
    swapped = dense_crf_torch(torch.from_numpy(image), torch.from_numpy(probs), CRFParams(
        iterations=iterations, gaussian_sxy=1e-3, bilateral_sxy=1e6, bilateral_srgb=1e6))  # fmt: skip
    np.testing.assert_allclose(swapped.numpy(), _mean_field_by_hand(probs, iterations, 4.0, 3.0), atol=1e-5)


def _tiny_case(seed: int, size: tuple[int, int], labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    probs = torch.from_numpy(rng.dirichlet(np.ones(labels), size).transpose(2, 0, 1).astype(np.float32))
    return image, probs


def test_batch_gives_each_images_own_result() -> None:
    cases = [_tiny_case(0, (13, 17), 3), _tiny_case(1, (9, 21), 2), _tiny_case(2, (16, 16), 4)]
    batched = dense_crf_torch_batch([c[0] for c in cases], [c[1] for c in cases])
    for (image, probs), q in zip(cases, batched):
        assert q.shape == probs.shape
        torch.testing.assert_close(q, dense_crf_torch(image, probs), atol=1e-6, rtol=0)
        np.testing.assert_allclose(q.numpy(), dense_crf(image.numpy(), probs.numpy()), atol=1e-4)


def test_dtypes_devices_and_bad_input() -> None:
    image, probs = _tiny_case(4, (11, 14), 3)
    q = dense_crf_torch(image, probs.double())
    assert q.dtype == torch.float32 and q.device == probs.device
    torch.testing.assert_close(q, dense_crf_torch(image, probs))
    via_numpy = dense_crf(image.numpy(), probs.numpy(), backend="torch")
    assert isinstance(via_numpy, np.ndarray) and via_numpy.dtype == np.float32
    np.testing.assert_array_equal(via_numpy, q.numpy())
    with pytest.raises(ValueError, match="differ in size"):
        dense_crf_torch(image, probs[:, :-1])
    with pytest.raises(ValueError, match="uint8"):
        dense_crf_torch(image.float(), probs)
    with pytest.raises(ValueError, match="unknown CRF backend"):
        dense_crf(image.numpy(), probs.numpy(), backend="opencv")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_matches_cpu() -> None:
    image, probs = _tiny_case(5, (40, 60), 3)
    q = dense_crf_torch(image.cuda(), probs.cuda())
    assert q.device.type == "cuda"
    torch.testing.assert_close(q.cpu(), dense_crf_torch(image, probs), atol=1e-5, rtol=0)


def test_crf_backend_choice() -> None:
    assert resolve_crf_backend("auto", "cpu") == ("pydensecrf", "cpu")
    assert resolve_crf_backend("auto", "cuda") == ("torch", "cuda")
    assert resolve_crf_backend("torch", "cpu") == ("torch", "cpu")
    assert resolve_crf_backend("pydensecrf", "cuda:1") == ("pydensecrf", "cpu")
    with pytest.raises(ConfigError, match="--crf-backend"):
        resolve_crf_backend("fast", "cpu")


def test_cli_records_the_crf_backend_and_rejects_a_bad_one(cli, golden_weights: Path, tmp_path: Path) -> None:
    from tests.conftest import make_image, write_labels

    images = tmp_path / "images"
    make_image(images / "a.png", (40, 56))
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    common = ["--labels", labels, "--weights", golden_weights, "--device", "cpu", "--workers", "0"]
    out = {b: tmp_path / b for b in ("torch", "pydensecrf", "auto")}
    for backend, folder in out.items():
        result = cli(images, *common, "--out", folder, "--crf-backend", backend)
        assert result.exit_code == 0, result.output
    settings = {b: json.loads((f / "run.json").read_text())["settings"] for b, f in out.items()}
    assert [settings[b]["crf_backend"] for b in out] == ["torch", "pydensecrf", "pydensecrf"]
    masks = [(f / "masks" / "a.png").read_bytes() for f in out.values()]
    assert masks[0] == masks[1] == masks[2]
    other = cli(images, *common, "--out", out["torch"], "--crf-backend", "pydensecrf")  # a rerun, other backend
    assert other.exit_code == 2 and "crf_backend 'torch' -> 'pydensecrf'" in other.output
    bad = cli(images, *common, "--out", tmp_path / "bad", "--crf-backend", "gpu")
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith("error: invalid value for '--crf-backend': 'gpu'")
    assert not (tmp_path / "bad").exists()
