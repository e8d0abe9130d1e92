"""Activation rules: which latents fire, and the JumpReLU straight-through estimators."""

from __future__ import annotations

import torch
from torch import Tensor


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """z·H(z − θ); θ learns through a rectangle-kernel STE (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_t = -(threshold / eps) * (grad * _rectangle((pre - threshold) / eps)).sum(0)
        return grad_pre, grad_t, None


class Step(torch.autograd.Function):
    """H(z − θ), for the L0 penalty; only θ gets a (pseudo-)gradient."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_t = -(1.0 / eps) * (grad * _rectangle((pre - threshold) / eps)).sum(0)
        return torch.zeros_like(pre), grad_t, None


def mask_to_sparse(acts: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(values, indices) [N, K] of the masked entries, K = the most any row has; padding is 0."""
    K = max(1, int(mask.sum(1).max())) if mask.numel() else 1
    K = min(K, acts.shape[1])
    keyed = torch.where(mask, acts, torch.finfo(acts.dtype).min)
    _, idx = keyed.topk(K, dim=1)
    vals = acts.gather(1, idx) * mask.gather(1, idx)
    return vals, idx


def batch_topk_mask(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k·N largest positive pre-activations of the whole batch, and the smallest kept one."""
    flat = pre.relu().reshape(-1)
    top = flat.topk(min(k * pre.shape[0], flat.numel()), sorted=False)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[top.indices] = True
    mask &= flat > 0
    kept = top.values[top.values > 0]
    lowest = kept.min() if kept.numel() else flat.new_tensor(0.0)
    return mask.reshape(pre.shape), lowest
