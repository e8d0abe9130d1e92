"""Sparse autograd kernels for TopK-style dictionaries on CPU and GPU.

A TopK dictionary touches only k of its L latents per token, so the backward pass should cost
O(N·k·D), not O(N·L·D). Both kernels route their weight gradients through one sparse
[L, N] × [N, D] product (CSR, sorted by latent) instead of materialising sparsify's N·k·D
contributions tensor and index-adding it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor



def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only stable ops
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def latent_major(indices: Tensor, weights: Tensor, num_latents: int) -> Tensor:
    """The sparse matrix Zᵀ [L, N] whose row l holds weights[n, j] where indices[n, j] == l."""
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    rows = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=num_latents)
    crow = torch.zeros(num_latents + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return _csr(crow, rows, weights.reshape(-1)[order], (num_latents, n))


def row_dots(indices: Tensor, rows: Tensor, vecs: Tensor) -> Tensor:
    """out[n, j] = rows[indices[n, j]] · vecs[n], as one sampled dense-dense product (SDDMM)
    that never gathers the N·k rows."""
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, device=indices.device)
    pattern = _csr(crow, indices.reshape(-1), vecs.new_zeros(n * k), (n, rows.shape[0]))
    return torch.sparse.sampled_addmm(pattern, vecs, rows.T, beta=0.0).values().reshape(n, k)


class GatherLinear(torch.autograd.Function):
    """values[n, j] = pre[n, indices[n, j]] where pre = (x - b_sub) W_encᵀ + b_enc.

    `pre` was computed (without autograd) by the caller, who needed all of it to pick the
    indices; this function only makes the picked entries differentiable, sparsely.
    """

    @staticmethod
    def forward(ctx, x, b_sub, W, b, pre, indices):
        xin = x if b_sub is None else x - b_sub
        ctx.save_for_backward(xin, W, indices)
        ctx.has_sub = b_sub is not None
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):
        xin, W, indices = ctx.saved_tensors
        L = W.shape[0]
        grad = grad.to(W.dtype)
        grad_x = grad_sub = grad_W = grad_b = None
        need_x, need_sub, need_W, need_b = ctx.needs_input_grad[:4]
        if need_W:
            grad_W = (latent_major(indices, grad, L) @ xin.to(W.dtype)).reshape(W.shape)
        col = None
        if need_b or need_sub:
            col = torch.zeros(L, dtype=W.dtype, device=W.device)
            col.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        if need_b:
            grad_b = col
        if need_sub and ctx.has_sub:
            # d/d b_sub of Σ_n grad[n]·pre[n] = -(Σ_n G[n, :]) W: a vector-matrix product
            grad_sub = -(col @ W)
        if need_x:
            grad_x = F.embedding_bag(indices, W, per_sample_weights=grad, mode="sum")
        return grad_x, grad_sub, grad_W, grad_b, None, None


class SparseDecode(torch.autograd.Function):
    """out[n] = Σ_j values[n, j] · W_dec[indices[n, j]]."""

    @staticmethod
    def forward(ctx, values, indices, W):
        ctx.save_for_backward(values, indices, W)
        return F.embedding_bag(indices, W, per_sample_weights=values.to(W.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad):
        values, indices, W = ctx.saved_tensors
        grad = grad.to(W.dtype)
        grad_v = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_v = row_dots(indices, W, grad).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = latent_major(indices, values.to(W.dtype), W.shape[0]) @ grad
        return grad_v, None, grad_W


def gather_linear(x: Tensor, b_sub: Tensor | None, W: Tensor, b: Tensor, pre: Tensor,
                  indices: Tensor) -> Tensor:
    return GatherLinear.apply(x, b_sub, W, b, pre, indices)


def sparse_decode(values: Tensor, indices: Tensor, W: Tensor) -> Tensor:
    return SparseDecode.apply(values, indices, W)
