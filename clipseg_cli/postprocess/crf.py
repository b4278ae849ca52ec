"""Fully connected CRF (Kraehenbuehl & Koltun) through pydensecrf, with CLIP-ES's settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Pairwise terms and iterations; the defaults are those of the CLIP-ES reference."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Mean-field inference; ``image`` (H, W, 3) uint8 RGB, ``probs`` (C, H, W) -> Q (C, H, W) float32.

    ``probs`` are used as given (not renormalised): unary = -log(clip(p, 1e-5, 1)).
    """
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
