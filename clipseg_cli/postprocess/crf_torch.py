"""The dense CRF of ``crf.py`` written in torch, so it runs on any device (CUDA included).

The model is the one pydensecrf wraps (Kraehenbuehl's densecrf library, version 2):
``DenseCRF2D`` with a Gaussian and a bilateral pairwise term, Potts compatibility, diagonal
kernels with symmetric normalisation, and ``inference(n)``::

    Q = softmax(-unary)
    repeat n times:  Q = softmax(-unary - sum_k pairwise_k(Q)),  pairwise_k(Q) = -w_k * K_k(Q)

where ``K_k`` is the normalised kernel ``D^-1/2 L D^-1/2`` and ``L`` the permutohedral-lattice
filter (Adams, Baek, Davis 2010) built the way densecrf builds it: the same feature scaling,
elevation, rounding to the nearest remainder-0 point (ties to even, as SSE rounding does),
ranking, barycentric weights, splat, a [1/2 1 1/2] blur along each of the d + 1 lattice
directions (a missing neighbour counts as 0), slice with alpha = 1 / (1 + 2^-d), and
``D`` = the filter applied to ones. The float32 arithmetic follows densecrf's order of
operations, so the lattice (which points exist, which pixel splats where) is the same.

Everything is vectorised: the lattice is built once per image (vertex keys packed into
int64, sorted and made unique; the blur neighbours found by binary search), then each
iteration is one ``index_add_`` (splat), 2(d + 1) gathers (blur) and d + 1 gathers (slice)
for all label channels together. Several images can share one lattice structure (their
keys carry the image index), which is what :func:`dense_crf_torch_batch` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from clipseg_cli.postprocess.crf import CRFParams

UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default


@dataclass
class PermutohedralLattice:
    """The lattice of N points with d-dimensional features (one or several images).

    Values are channels-first, (C, N) at the points and (C, M + 1) at the vertices. Vertices
    are numbered 1..M; column 0 is a zero column that stands for every missing blur neighbour
    (densecrf's -1 shifted by one), so the blur never reads outside the table.
    """

    offsets: torch.Tensor  # (d + 1, N) int64: the vertex each point splats to, per remainder
    weights: torch.Tensor  # (d + 1, N) float32: its barycentric weight
    neighbours: torch.Tensor  # (d + 1, 2, M + 1) int64: blur neighbours along each direction
    n_vertices: int  # M

    @property
    def dim(self) -> int:
        return self.offsets.shape[0] - 1

    def splat(self, values: torch.Tensor) -> torch.Tensor:
        """(C, N) point values -> (C, M + 1) vertex values (column 0 stays 0)."""
        channels = values.shape[0]
        table = values.new_zeros(channels, self.n_vertices + 1)
        contributions = (self.weights[None] * values[:, None]).reshape(channels, -1)
        return table.index_add_(1, self.offsets.reshape(-1), contributions)

    def blur(self, table: torch.Tensor) -> torch.Tensor:
        """densecrf's blur: along directions 0..d, value + 0.5 * (left + right)."""
        for direction in range(self.dim + 1):
            left, right = self.neighbours[direction]
            table = table + 0.5 * (table.index_select(1, left) + table.index_select(1, right))
        return table

    def slice(self, table: torch.Tensor) -> torch.Tensor:
        """(C, M + 1) vertex values -> (C, N) point values, times densecrf's alpha (kept for the
        raw filter; in the CRF any constant factor of the filter cancels in the normalisation)."""
        alpha = 1.0 / (1.0 + 2.0 ** (-self.dim))
        out = self.weights[0] * table.index_select(1, self.offsets[0])
        for remainder in range(1, self.dim + 1):
            out = out + self.weights[remainder] * table.index_select(1, self.offsets[remainder])
        return out * alpha

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Approximate Gaussian filtering of (C, N) values (unnormalised), as densecrf's compute()."""
        return self.slice(self.blur(self.splat(values)))


def _scale_factors(d: int, device: torch.device) -> torch.Tensor:
    """densecrf's diagonal of E times the inverse standard deviation, rounded to float32."""
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    factors = [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)]
    return torch.tensor(factors, dtype=torch.float32, device=device)


def _simplices(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per point, in densecrf's float32 order of operations: the remainder-0 vertex ``rem0``
    (N, d + 1) int64, the ``rank`` of each coordinate (N, d + 1) int64 and the barycentric
    weights (N, d + 1) float32 of the d + 1 enclosing vertices (remainders 0..d)."""
    n, d = features.shape
    device = features.device
    cf = features * _scale_factors(d, device)  # (N, d)
    # Elevate: elevated[j] = sum_{k >= j} cf[k] - j * cf[j - 1], summed from the top as densecrf does.
    elevated: list[torch.Tensor] = [features.new_zeros(n)] * (d + 1)
    sm = features.new_zeros(n)
    for j in range(d, 0, -1):
        elevated[j] = sm - float(j) * cf[:, j - 1]
        sm = sm + cf[:, j - 1]
    elevated[0] = sm
    elevated_t = torch.stack(elevated, dim=1)  # (N, d + 1)

    # Nearest remainder-0 point: round(elevated / (d + 1)) with ties to even (SSE rounding).
    down = float(torch.tensor(1.0 / (d + 1), dtype=torch.float32))
    v = torch.round(elevated_t * down)
    rem0 = v * float(d + 1)
    total = v.sum(dim=1, keepdim=True).to(torch.int64)

    # rank[i] = #{j > i: diff_i < diff_j} + #{j < i: not diff_j < diff_i}, diff = elevated - rem0
    # (densecrf's pairwise comparisons, so ties rank as there).
    diff = elevated_t - rem0
    counts = [torch.zeros(n, dtype=torch.int64, device=device) for _ in range(d + 1)]
    for i in range(d):
        for j in range(i + 1, d + 1):
            less = diff[:, i] < diff[:, j]
            counts[i] += less
            counts[j] += ~less
    rank = torch.stack(counts, dim=1)
    # Bring the point back onto the plane: rank += sum, wrapped into 0..d (rem0 moves with it).
    rank = rank + total
    shift = torch.where(rank < 0, d + 1, 0) - torch.where(rank > d, d + 1, 0)
    rank = rank + shift
    rem0 = rem0 + shift.to(rem0.dtype)

    # Barycentric coordinates: b[d - rank_i] += v_i, b[d - rank_i + 1] -= v_i, then wrap b[d + 1].
    # rank is a permutation, so each b[p] gets exactly one + and one - term (exact in either order).
    v = (elevated_t - rem0) * down
    by_rank = torch.zeros_like(v).scatter_(1, rank, v)  # by_rank[r] = v_i with rank_i == r
    flipped = by_rank.flip(1)  # flipped[p] = v_i with rank_i == d - p
    weights = torch.empty_like(v)
    weights[:, 1:] = flipped[:, 1:] - flipped[:, :-1]
    weights[:, 0] = flipped[:, 0] + (1.0 - by_rank[:, 0])
    return rem0.to(torch.int64), rank, weights


def build_lattice(features: torch.Tensor, groups: torch.Tensor | None = None, *, pack: bool = True) -> PermutohedralLattice:
    """The lattice of (N, d) float32 features; ``groups`` (N,) int64 keeps images apart in a batch.

    A vertex's key is its first d coordinates (the last is minus their sum). Vertex i of the
    simplex of a point (remainder r) has key rem0 + r - (d + 1) * [rank > d - r] per coordinate;
    its blur neighbours along direction j < d are key - 1 with coordinate j + d, and key + 1 with
    coordinate j - d; along direction d, key - 1 and key + 1. Keys are packed into one int64
    (mixed radix) when their ranges allow (``pack``), else compared as rows.
    """
    if features.dtype != torch.float32 or features.dim() != 2:
        raise ValueError("features must be a float32 (N, d) tensor")
    n, d = features.shape
    device = features.device
    rem0, rank, weights = _simplices(features)
    group = torch.zeros(n, dtype=torch.int64, device=device) if groups is None else groups.to(device, torch.int64)
    # Coordinate ranges: a key lies within rem0 - (d + 1) .. rem0 + d, a neighbour d further.
    low = torch.cat([group.min()[None], rem0[:, :d].min(dim=0).values - (2 * d + 1)]).tolist()
    high = torch.cat([group.max()[None], rem0[:, :d].max(dim=0).values + 2 * d]).tolist()
    sizes = [hi - lo + 1 for lo, hi in zip(low, high)]
    if pack and math.prod(sizes) < 2**62:
        strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
        ids, neighbours, n_vertices = _packed_index(group, rem0, rank, low, strides)
    else:
        ids, neighbours, n_vertices = _row_index(group, rem0, rank)
    offsets = ids.reshape(n, d + 1).T.contiguous() + 1
    neighbours = torch.cat([neighbours.new_zeros(d + 1, 2, 1), neighbours + 1], dim=2)
    return PermutohedralLattice(offsets, weights.T.contiguous(), neighbours, n_vertices)


def _lookup(sorted_keys: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Index of each wanted key in the sorted unique keys, -1 where it is not there."""
    found = torch.searchsorted(sorted_keys, wanted).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[found] == wanted, found, -1)


def _with_right_neighbours(left: torch.Tensor) -> torch.Tensor:
    """(d + 1, M) left neighbours -> (d + 1, 2, M) left and right: u's left is v exactly when
    v's right is u (the two steps along a direction are opposite), so one lookup serves both."""
    right = torch.full_like(left, -1)
    for direction in range(left.shape[0]):
        (has,) = torch.nonzero(left[direction] >= 0, as_tuple=True)
        right[direction, left[direction, has]] = has
    return torch.stack([left, right], dim=1)


def _packed_index(
    group: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor, low: list[int], strides: list[int]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Vertex ids (N * (d + 1),) point-major, blur neighbours (d + 1, 2, M) and M, with each key
    packed as (group, k_0, .., k_{d-1}) in mixed radix, so neighbours are the packed key +- a constant."""
    n, d = rank.shape[0], rank.shape[1] - 1
    coordinate_strides = strides[1:]
    base = (group - low[0]) * strides[0]
    for i in range(d):
        base = base + (rem0[:, i] - low[i + 1]) * coordinate_strides[i]
    # T(r) = sum of the strides of coordinates i < d with rank_i > d - r, from cumulative sums by rank.
    stride_row = torch.tensor(coordinate_strides, dtype=torch.int64, device=rank.device)
    by_rank = torch.zeros_like(rank).scatter_(1, rank[:, :d], stride_row.expand(n, d))
    above = by_rank.flip(1).cumsum(dim=1)  # above[m] = sum over ranks >= d - m
    total = sum(coordinate_strides)
    packed = torch.empty_like(rank)
    packed[:, 0] = base
    for r in range(1, d + 1):
        packed[:, r] = base + r * total - (d + 1) * above[:, r - 1]
    unique, ids = torch.unique(packed.reshape(-1), sorted=True, return_inverse=True)
    # Left neighbour along direction j: every coordinate - 1, coordinate j (if j < d) + d instead.
    shifts = [((d + 1) * coordinate_strides[j] if j < d else 0) - total for j in range(d + 1)]
    wanted = unique[None, :] + torch.tensor(shifts, dtype=torch.int64, device=unique.device)[:, None]
    return ids, _with_right_neighbours(_lookup(unique, wanted)), unique.numel()


def _row_index(group: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """As :func:`_packed_index` with the keys kept as rows (group, k_0, .., k_{d-1}); slower, any range."""
    n, d = rank.shape[0], rank.shape[1] - 1
    device = rank.device
    r = torch.arange(d + 1, device=device)
    keys = rem0[:, None, :d] + r[None, :, None] - (d + 1) * (rank[:, None, :d] > (d - r)[None, :, None]).long()
    keys = torch.cat([group[:, None, None].expand(n, d + 1, 1), keys], dim=2).reshape(-1, d + 1)
    unique, ids = torch.unique(keys, dim=0, sorted=True, return_inverse=True)
    m = unique.shape[0]
    deltas = torch.zeros(d + 1, d + 1, dtype=torch.int64, device=device)
    deltas[:, 1:] = -1
    for j in range(d):
        deltas[j, j + 1] = d
    wanted = (unique[None] + deltas[:, None, :]).reshape(-1, d + 1)
    _, union_ids = torch.unique(torch.cat([unique, wanted]), dim=0, return_inverse=True)
    vertex_of = torch.full((int(union_ids.max()) + 1,), -1, dtype=torch.int64, device=device)
    vertex_of[union_ids[:m]] = torch.arange(m, device=device)
    return ids, _with_right_neighbours(vertex_of[union_ids[m:]].reshape(d + 1, m)), m


def gaussian_features(height: int, width: int, sxy: float, device: torch.device) -> torch.Tensor:
    """densecrf's addPairwiseGaussian features: (x / sx, y / sy), row-major pixels, float32."""
    scale = torch.full((1,), sxy, dtype=torch.float32, device=device)  # a tensor: exact division on CUDA too
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1) / scale, ys.reshape(-1) / scale], dim=1)


def bilateral_features(image: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    """densecrf's addPairwiseBilateral features: (x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)."""
    height, width = image.shape[:2]
    colour = image.reshape(-1, 3).to(torch.float32) / torch.full((1,), srgb, dtype=torch.float32, device=image.device)
    return torch.cat([gaussian_features(height, width, sxy, image.device), colour], dim=1)


@dataclass
class _Kernel:
    lattice: PermutohedralLattice
    norm: torch.Tensor  # (1, N): 1 / sqrt(filter(ones) + 1e-20)
    weight: float  # Potts compatibility

    @classmethod
    def build(cls, features: torch.Tensor, groups: torch.Tensor | None, weight: float) -> "_Kernel":
        lattice = build_lattice(features, groups)
        ones = features.new_ones(1, features.shape[0])
        norm = 1.0 / torch.sqrt(lattice.filter(ones) + 1e-20)
        return cls(lattice, norm, weight)

    def potential(self, q: torch.Tensor) -> torch.Tensor:
        """densecrf's PairwisePotential::apply with PottsCompatibility: -w * D^-1/2 L D^-1/2 Q."""
        return -self.weight * (self.lattice.filter(q * self.norm) * self.norm)


def mean_field(unary: torch.Tensor, kernels: Sequence[_Kernel], iterations: int) -> torch.Tensor:
    """densecrf's DenseCRF::inference on (C, N) unary energies (+inf: a label that is not there)."""
    q = torch.softmax(-unary, dim=0)
    for _ in range(iterations):
        energy = -unary
        for kernel in kernels:
            energy = energy - kernel.potential(q)
        q = torch.softmax(energy, dim=0)
    return q


def _check(image: torch.Tensor, probs: torch.Tensor) -> None:
    if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(image.shape)} {image.dtype}")
    if probs.dim() != 3 or probs.shape[0] < 1:
        raise ValueError(f"probabilities must be (C, H, W) with C >= 1, got {tuple(probs.shape)}")
    if tuple(image.shape[:2]) != tuple(probs.shape[1:]):
        raise ValueError(f"image {tuple(image.shape[:2])} and probabilities {tuple(probs.shape[1:])} differ in size")
    if image.device != probs.device:
        raise ValueError(f"image ({image.device}) and probabilities ({probs.device}) are on different devices")


def dense_crf_torch_batch(
    images: Sequence[torch.Tensor], probs: Sequence[torch.Tensor], params: CRFParams = CRFParams()
) -> list[torch.Tensor]:
    """:func:`dense_crf_torch` for several images at once: one lattice structure holds them all
    (image sizes and label counts may differ); returns one (C_i, H_i, W_i) float32 Q per image."""
    if len(images) != len(probs):
        raise ValueError(f"{len(images)} images but {len(probs)} probability maps")
    if not images:
        return []
    for image, prob in zip(images, probs):
        _check(image, prob)
    device = images[0].device
    if any(t.device != device for t in (*images, *probs)):
        raise ValueError("all images and probabilities must be on one device")
    n_labels = max(p.shape[0] for p in probs)
    sizes = [p.shape[1] * p.shape[2] for p in probs]
    unaries = []
    for prob in probs:
        unary = -torch.log(prob.to(torch.float32).reshape(prob.shape[0], -1).clamp(UNARY_CLIP, 1.0))
        if prob.shape[0] < n_labels:  # labels this image does not have: Q stays 0 there
            unary = torch.cat([unary, unary.new_full((n_labels - prob.shape[0], unary.shape[1]), math.inf)])
        unaries.append(unary)
    unary = torch.cat(unaries, dim=1)  # (C, N)
    groups = None
    if len(images) > 1:
        groups = torch.repeat_interleave(torch.arange(len(images), device=device), torch.tensor(sizes, device=device))
    gaussian = torch.cat([gaussian_features(*p.shape[1:], params.gaussian_sxy, device) for p in probs])
    bilateral = torch.cat([bilateral_features(im, params.bilateral_sxy, params.bilateral_srgb) for im in images])
    kernels = [
        _Kernel.build(gaussian, groups, params.gaussian_compat),
        _Kernel.build(bilateral, groups, params.bilateral_compat),
    ]
    q = mean_field(unary, kernels, params.iterations)
    out = []
    for part, prob in zip(torch.split(q, sizes, dim=1), probs):
        out.append(part[: prob.shape[0]].reshape(prob.shape).contiguous())
    return out


def dense_crf_torch(image: torch.Tensor, probs: torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """Mean-field inference; ``image`` (H, W, 3) uint8 RGB, ``probs`` (C, H, W) -> Q (C, H, W) float32,
    on the inputs' device. ``probs`` are used as given: unary = -log(clip(p, 1e-5, 1))."""
    return dense_crf_torch_batch([image], [probs], params)[0]
