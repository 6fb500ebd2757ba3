"""The solves: MEMIT's closed-form least-squares update (ROME's rank-one update as its one-key
limit) and AlphaEdit's null-space projector, in float64, with the statistics brought beside the keys.
"""
from __future__ import annotations

import torch

from ...errors import EditError


# ------------------------------------------------------------------------------------ the solves
def beside(t: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """`t` on `like`'s device. The statistics (C, AlphaEdit's projector and preserved keys) are kept on
    the CPU, between edits and on disk, while keys and values live where the model computes: every
    solve brings them together here. A tensor on ``meta`` holds no values (an offloaded placeholder):
    that is a workbench bug to report, named, not torch's "Cannot copy out of meta tensor"."""
    if t.device.type == "meta" and like.device.type != "meta":
        raise EditError(f"{what} is on the meta device (a placeholder without values) while the keys are on "
                        f"{like.device}: statistics must be computed from real weights (placement.state_dict)")
    return t.to(like.device)


def solve(residuals: torch.Tensor, k: torch.Tensor, c: torch.Tensor | None, lam: float,
          extra: torch.Tensor | None = None) -> torch.Tensor:
    """MEMIT's update: Δ = R Kᵀ (λ C + K Kᵀ + extra)⁻¹, in float64.

    Args:
        residuals: R, [d_out, n] (what the n keys' outputs should gain).
        k: K, [d_in, n].
        c: C = E[k kᵀ] of preserved keys, [d_in, d_in] (None: no preservation term).
        extra: added inside the inverse (AnyEdit's K_p K_pᵀ of the sequence's other tokens).
    Returns:
        Δ, [d_out, d_in] float32: the minimiser of ||Δ K - R||² + λ tr(Δ C Δᵀ) (+ the extra term).
    """
    k = k.double()
    r = beside(residuals, k, "the residuals R").double()  # R at the top layer's device, K at this layer's
    a = k @ k.T
    if c is not None and lam:
        a = a + lam * beside(c, k, "the second-moment statistics C").double()
    if extra is not None:
        a = a + beside(extra, k, "the preserved keys' K_p K_pᵀ").double()
    return torch.linalg.solve(a, k @ r.T).T.float()  # A is symmetric: (R Kᵀ A⁻¹)ᵀ = A⁻¹ K Rᵀ


def null_space(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's projector onto the null space of the preserved keys: P = Û Ûᵀ, Û the eigenvectors of
    C = E[k kᵀ] whose eigenvalues are below `threshold`. [d_in, d_in] float32; P k ≈ 0 for keys the
    statistics saw, so an update Δ P leaves their outputs unchanged."""
    values, vectors = torch.linalg.eigh(c.double())
    u = vectors[:, values < threshold]
    return (u @ u.T).float()
