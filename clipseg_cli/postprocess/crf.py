"""Fully connected CRF (Kraehenbuehl & Koltun) with CLIP-ES's settings, on one of two backends:
pydensecrf (the C++ densecrf library, CPU) or the same model in torch (``crf_torch``, any device)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipseg_cli.errors import ConfigError


@dataclass(frozen=True)
class CRFParams:
    """Pairwise terms and iterations; the defaults are those of the CLIP-ES reference."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


CRF_BACKENDS = ("pydensecrf", "torch")
CRF_BACKEND_CHOICES = ("auto", *CRF_BACKENDS)


def resolve_crf_backend(choice: str, model_device: str) -> tuple[str, str]:
    """``--crf-backend auto|pydensecrf|torch`` -> (backend, the device the CRF runs on).

    auto: torch on the model's GPU when the model runs on CUDA, else pydensecrf. torch: on the
    model's device. pydensecrf: always the CPU.
    """
    choice = choice.lower()
    if choice not in CRF_BACKEND_CHOICES:
        raise ConfigError(f"unknown --crf-backend {choice!r}; choose one of {', '.join(CRF_BACKEND_CHOICES)}")
    on_cuda = str(model_device).startswith("cuda")
    if choice == "torch" or (choice == "auto" and on_cuda):
        return "torch", str(model_device)
    return "pydensecrf", "cpu"


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    params: CRFParams = CRFParams(),
    backend: str = "pydensecrf",
    device: str = "cpu",
) -> np.ndarray:
    """Mean-field inference; ``image`` (H, W, 3) uint8 RGB, ``probs`` (C, H, W) -> Q (C, H, W) float32.

    ``probs`` are used as given (not renormalised): unary = -log(clip(p, 1e-5, 1)).
    ``backend``: "pydensecrf" (CPU) or "torch" (``crf_torch.dense_crf_torch`` on ``device``).
    """
    if backend == "torch":
        return _dense_crf_torch(image, probs, params, device)
    if backend != "pydensecrf":
        raise ValueError(f"unknown CRF backend {backend!r}; choose one of {', '.join(CRF_BACKENDS)}")
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    n_labels, height, width = probs.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(height, width)} differ in size")
    unary = np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32)))
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C", copy=True),  # pydensecrf needs a writable buffer
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def _dense_crf_torch(image: np.ndarray, probs: np.ndarray, params: CRFParams, device: str) -> np.ndarray:
    import torch

    from clipseg_cli.postprocess.crf_torch import dense_crf_torch

    image_t = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(device)  # W: no read-only warning
    probs_t = torch.from_numpy(np.require(probs, np.float32, ["C", "W"])).to(device)
    return dense_crf_torch(image_t, probs_t, params).cpu().numpy()
