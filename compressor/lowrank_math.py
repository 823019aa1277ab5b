"""Low-rank factorisation of a layer's weight, pure numpy (no ONNX; unit-tested alone).

A layer Y = X W with W (m x n, m inputs, n outputs) becomes Y = (X A) B with A (m x r) and
B (r x n): r·(m + n) values instead of m·n.  Without data the best rank-r W_r is the
truncated SVD (Eckart-Young: it minimises the weight error ||W - W_r||).  With the layer's
input covariance C = XᵀX the quantity that matters is the output error

    e(r) = tr(ΔWᵀ C ΔW) / tr(Wᵀ C W),    ΔW = W - A B,

which the truncated SVD of R W minimises instead (R = C^{1/2}, the inputs "whitened"): the
factors are A = R⁻¹ U_r S_r^{1/2}, B = S_r^{1/2} V_rᵀ (the singular values split evenly, so
both factors have the same scale for sharing and quantization).  A small ridge keeps R
invertible when some input directions never vary; ``Factorization.errors`` are measured
under the true C all the same.  ``refit_right`` solves B again by least squares for a given
A (the optional refit on calibration inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Ridge added to C (times the mean of its diagonal) before its square root is inverted.
DAMP = 1e-4
# A factorisation is worth writing only when r·(m + n) <= MARGIN · m·n: two products cost
# more time than one and their factors share and pack a little worse.
MARGIN = 0.8


def factored_params(m: int, n: int, rank: int) -> int:
    """Values of the two factors of an m x n weight at `rank`."""
    return int(rank) * (int(m) + int(n))


def max_rank(m: int, n: int, margin: float = MARGIN) -> int:
    """The largest rank whose factors hold at most `margin` of the m·n values (0: none)."""
    return int(np.floor(margin * m * n / (m + n)))


def sparse_values(nonzeros: int, size: int, bits: float = 5.0) -> float:
    """What a weight with `nonzeros` of `size` values costs, in values of `bits` bits: the
    nonzeros plus where they are (the entropy of the zero mask, H(d) bits per value at density
    d), as a shared and entropy-coded sparse tensor packs.  `size` when dense."""
    if size <= 0 or nonzeros >= size:
        return float(size)
    d = nonzeros / size
    if d <= 0:
        return 0.0
    mask_bits = -(d * np.log2(d) + (1 - d) * np.log2(1 - d))
    return nonzeros + size * mask_bits / bits


def worthwhile(m: int, n: int, rank: int, margin: float = MARGIN) -> bool:
    return 0 < rank <= max_rank(m, n, margin)


def _sqrt_and_inverse(cov: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, R⁻¹, C^{1/2}) for the symmetric square root R of C + ridge, and of C itself."""
    c = np.asarray(cov, dtype=np.float64)
    c = (c + c.T) / 2
    values, vectors = np.linalg.eigh(c)
    values = np.maximum(values, 0.0)
    ridge = damp * max(float(np.mean(np.diag(c))), 1e-300)
    root = np.sqrt(values + ridge)
    r = (vectors * root) @ vectors.T
    r_inv = (vectors / root) @ vectors.T
    exact = (vectors * np.sqrt(values)) @ vectors.T
    return r, r_inv, exact


@dataclass(frozen=True)
class Factorization:
    """Every rank's factors of one weight at once: ``factors(r)`` slices them.

    `left` (m x k) and `right` (k x n), k = min(m, n), in decreasing order of importance;
    `errors[r]` (r = 0..k) the relative error of rank r: of the output under the covariance
    when there is one (``method`` "covariance"), else of the weight ("weight")."""

    left: np.ndarray
    right: np.ndarray
    errors: np.ndarray
    method: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        return self.left[:, :rank], self.right[:rank]

    def rank_for_error(self, max_error: float) -> int:
        """The smallest rank whose relative error is at most `max_error`."""
        return int(np.argmax(self.errors <= max_error)) if np.any(self.errors <= max_error) else len(self.errors) - 1


def factorize(w: np.ndarray, cov: np.ndarray | None = None, damp: float = DAMP) -> Factorization:
    """The truncated SVD of W (m x n) at every rank: whitened by `cov` (m x m) when given."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"factorize needs a matrix, got shape {w.shape}")
    if cov is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        power = s**2
        total = float(power.sum())
        tail = np.concatenate([np.cumsum(power[::-1])[::-1], [0.0]])
        errors = tail / total if total > 0 else np.zeros(len(s) + 1)
        root = np.sqrt(s)
        return Factorization(u * root, root[:, None] * vt, errors, "weight")
    r, r_inv, exact = _sqrt_and_inverse(cov, damp)
    u, s, vt = np.linalg.svd(r @ w, full_matrices=False)
    left = r_inv @ u  # W = left · diag(s) · vt exactly
    # The error of rank k under the true C: Σ_{i>k} s_i² ‖C^{1/2} left_i‖² (the v_i are orthonormal).
    gain = np.sum(np.square(exact @ left), axis=0)
    power = s**2 * gain
    total = float(np.sum((np.asarray(cov, dtype=np.float64) @ w) * w))
    tail = np.concatenate([np.cumsum(power[::-1])[::-1], [0.0]])
    errors = tail / total if total > 0 else np.zeros(len(s) + 1)
    root = np.sqrt(s)
    return Factorization(left * root, root[:, None] * vt, np.maximum.accumulate(errors[::-1])[::-1], "covariance")


def rank_for_ratio(m: int, n: int, ratio: float) -> int:
    """The rank that is `ratio` of the full rank min(m, n), at least 1."""
    return max(1, int(round(ratio * min(m, n))))


def output_error(w: np.ndarray, approx: np.ndarray, cov: np.ndarray | None = None) -> float:
    """tr(ΔWᵀ C ΔW) / tr(Wᵀ C W) (with C = I without a covariance)."""
    w = np.asarray(w, dtype=np.float64)
    delta = w - np.asarray(approx, dtype=np.float64)
    if cov is None:
        total = float(np.sum(w * w))
        return float(np.sum(delta * delta)) / total if total > 0 else 0.0
    cov = np.asarray(cov, dtype=np.float64)
    total = float(np.sum((cov @ w) * w))
    return float(np.sum((cov @ delta) * delta)) / total if total > 0 else 0.0


def refit_right(w: np.ndarray, a: np.ndarray, cov: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """B = argmin ‖X W − X A B‖² = (AᵀCA)⁻¹ AᵀCW for the inputs' covariance C (a small ridge)."""
    w = np.asarray(w, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    ca = cov @ a
    gram = a.T @ ca
    ridge = damp * max(float(np.mean(np.diag(gram))) if gram.size else 0.0, 1e-300)
    return np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), ca.T @ w)


def choose_ranks(
    factorizations: dict[str, Factorization],
    weight: float,
    margin: float = MARGIN,
    dense_values: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Per tensor the rank minimising  e(r) + weight · values(r) / values(all tensors),  dense
    (rank 0 in the result: left as it is, no error) among the choices; only ranks whose factors
    hold at most `margin` of the dense layer's values count.  `dense_values`: what each dense
    layer costs when not m·n (``sparse_values``, once pruned).
    A larger `weight` trades more error for fewer values (a Lagrangian allocation: one number
    steers every layer)."""
    dense_values = dense_values or {}
    dense = {name: float(dense_values.get(name, f.shape[0] * f.shape[1])) for name, f in factorizations.items()}
    total = sum(dense.values()) or 1
    ranks = {}
    for name, f in factorizations.items():
        m, n = f.shape
        top = min(int(np.floor(margin * dense[name] / (m + n))), len(f.errors) - 1)
        if top < 1:
            ranks[name] = 0
            continue
        candidates = np.arange(1, top + 1)
        cost = f.errors[1 : top + 1] + weight * candidates * (m + n) / total
        best = int(np.argmin(cost))
        ranks[name] = int(candidates[best]) if cost[best] < weight * dense[name] / total else 0
    return ranks
