"""Small numeric helpers shared by the CAM steps."""

from __future__ import annotations

import cv2
import numpy as np


def minmax(cam: np.ndarray) -> np.ndarray:
    """``(cam - min) / (max + 1e-7)`` as the reference's ``scale_cam_image`` does it (float32)."""
    cam = cam - np.min(cam)
    return (cam / (1e-7 + np.max(cam))).astype(np.float32)


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, h, w) float32 -> (K, height, width) with OpenCV's default bilinear resize."""
    out = np.empty((maps.shape[0], height, width), dtype=np.float32)
    for k, m in enumerate(maps):
        out[k] = cv2.resize(np.ascontiguousarray(m, dtype=np.float32), (width, height))
    return out
