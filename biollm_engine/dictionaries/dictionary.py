"""`Dictionary`: one sparse dictionary module for SAEs, transcoders, skip transcoders and
crosscoders, with TopK, BatchTopK, JumpReLU or ReLU latents.

Shapes: `W_enc` [L, d_in], `b_enc` [L], `W_dec` [L, d_out], `b_dec` [d_out], `W_skip`
[d_out, d_in]. A crosscoder with S sources has `W_enc` [L, S, d_in], `W_dec` [L, S, d_out],
`b_dec` [S, d_out] and reads x [..., S, d_in]: it is computed as one dictionary over the
concatenated sources, so every code path below works on 2-D [N, S·d] views.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import to_dict
from ..errors import BioLLMError
from ..fileio import atomic_dir, write_json
from .activations import JumpReLU, Step, batch_topk_mask, mask_to_sparse
from .config import DictionaryConfig
from .kernels import gather_linear, sparse_decode

WEIGHTS_FILE = "dictionary.safetensors"
BATCHTOPK_THRESHOLD_BETA = 0.999


class DictionaryOutput(NamedTuple):
    out: Tensor
    """The reconstruction of the target (x for SAEs and crosscoders)."""
    latent_acts: Tensor
    """Values of the active latents [N, K] (0 where a row has fewer than K)."""
    latent_indices: Tensor
    """Indices of the active latents [N, K]."""
    fvu: Tensor
    """Fraction of variance unexplained."""
    auxk_loss: Tensor
    """AuxK loss (dead latents predicting the residual), 0 when no dead mask is given."""
    sparsity_loss: Tensor
    """L1 (relu) or L0 (jumprelu) penalty, already weighted; 0 for topk and batchtopk."""


class Dictionary(nn.Module):
    def __init__(self, cfg: DictionaryConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        L, S = cfg.num_latents, cfg.n_sources
        lead = (L,) if S == 1 else (L, S)
        kw = dict(device=device, dtype=dtype or torch.float32)
        bound = 1.0 / math.sqrt(S * cfg.d_in)  # nn.Linear's default init, as in sparsify
        self.W_enc = nn.Parameter(torch.empty(*lead, cfg.d_in, **kw).uniform_(-bound, bound))
        self.b_enc = nn.Parameter(torch.zeros(L, **kw))
        if cfg.kind in ("transcoder", "skip_transcoder"):
            self.W_dec = nn.Parameter(torch.zeros(*lead, cfg.d_out, **kw))
        else:
            self.W_dec = nn.Parameter(self.W_enc.detach().clone())
        self.b_dec = nn.Parameter(torch.zeros(*lead[1:], cfg.d_out, **kw))
        self.W_skip = (nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in, **kw))
                       if cfg.kind == "skip_transcoder" else None)
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((L,), float(cfg.jumprelu_threshold), **kw))
        elif cfg.activation == "batchtopk":
            # Inference threshold, a running mean of the smallest kept activation; -1: not yet
            self.register_buffer("threshold", torch.tensor(-1.0, **kw))
        if cfg.normalize_decoder and cfg.kind in ("sae", "crosscoder"):
            self.set_decoder_norm_to_unit_norm()

    # ---- views -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    def _W_enc(self) -> Tensor:
        return self.W_enc.reshape(self.num_latents, -1)

    def _W_dec(self) -> Tensor:
        return self.W_dec.reshape(self.num_latents, -1)

    def _b_dec(self) -> Tensor:
        return self.b_dec.reshape(-1)

    def _flat(self, x: Tensor, width: int, what: str) -> tuple[Tensor, tuple]:
        S = self.cfg.n_sources
        tail = (S, width) if S > 1 else (width,)
        if x.dim() < len(tail) or tuple(x.shape[x.dim() - len(tail):]) != tail:
            raise BioLLMError(f"{what} has shape {tuple(x.shape)} but this {self.cfg.kind} "
                              f"expects [..., {', '.join(map(str, tail))}]; check the hookpoint.")
        lead = tuple(x.shape[:x.dim() - len(tail)])
        x = x.reshape(-1, S * width)
        if x.dtype != self.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.dtype)
        return x, lead

    def _unflat(self, out: Tensor, lead: tuple) -> Tensor:
        S = self.cfg.n_sources
        return out.reshape(*lead, *((S, self.cfg.d_out) if S > 1 else (self.cfg.d_out,)))

    def _input(self, x2: Tensor) -> Tensor:
        return x2 - self._b_dec() if self.cfg.apply_b_dec_to_input else x2

    def pre_acts(self, x2: Tensor) -> Tensor:
        """Encoder pre-activations [N, L] of flattened inputs [N, S·d_in]."""
        return torch.addmm(self.b_enc, self._input(x2), self._W_enc().T)

    # ---- which latents fire ------------------------------------------------------------------
    def _select(self, pre: Tensor, learn: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(values, indices, keep) from pre-activations; keep masks padding (None: all kept).
        `learn`: a training forward pass, which updates BatchTopK's inference threshold."""
        act = self.cfg.activation
        if act == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=1, sorted=False)
            return vals.relu(), idx, None
        if act == "batchtopk":
            if self.training or float(self.threshold) < 0:
                mask, lowest = batch_topk_mask(pre, self.cfg.k)
                if learn and pre.shape[0] > 0:
                    self._update_threshold(lowest)
            else:
                mask = pre > self.threshold.clamp_min(0)
        elif act == "jumprelu":
            mask = pre > self.threshold
        else:
            mask = pre > 0
        vals, idx = mask_to_sparse(pre, mask)
        return vals, idx, mask.gather(1, idx)

    @torch.no_grad()
    def _update_threshold(self, lowest: Tensor) -> None:
        if float(self.threshold) < 0:
            self.threshold.copy_(lowest)
        else:
            self.threshold.lerp_(lowest, 1 - BATCHTOPK_THRESHOLD_BETA)

    # ---- public API ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Active latents per token: (values, indices) [..., K], largest first, 0-padded."""
        x2, lead = self._flat(x, self.cfg.d_in, "input")
        vals, idx, _ = self._select(self.pre_acts(x2))
        vals, order = vals.sort(dim=1, descending=True)
        idx = idx.gather(1, order)
        return vals.reshape(*lead, -1), idx.reshape(*lead, -1)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Latent activations [..., L], zeros where inactive."""
        vals, idx = self.encode_sparse(x)
        lead = vals.shape[:-1]
        dense = torch.zeros(vals[..., :1].numel(), self.num_latents, dtype=vals.dtype,
                            device=vals.device)
        dense.scatter_(1, idx.reshape(dense.shape[0], -1), vals.reshape(dense.shape[0], -1))
        return dense.reshape(*lead, self.num_latents)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction from dense latents [..., L] (without the skip term, which needs x)."""
        lead = z.shape[:-1]
        out = torch.addmm(self._b_dec(), z.reshape(-1, self.num_latents).to(self.dtype),
                          self._W_dec())
        return self._unflat(out, lead)

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """Reconstruction from (values, indices) [..., K] (without the skip term)."""
        lead = values.shape[:-1]
        K = values.shape[-1]
        out = sparse_decode(values.reshape(-1, K), indices.reshape(-1, K), self._W_dec())
        return self._unflat(out + self._b_dec(), lead)

    def forward(self, x: Tensor, y: Tensor | None = None, dead_mask: Tensor | None = None,
                total_variance: Tensor | None = None) -> DictionaryOutput:
        """Reconstruct the target y (x itself for SAEs and crosscoders) and the training losses.

        `dead_mask` [L] turns on the AuxK loss; `total_variance` lets micro-batches share the
        whole batch's variance as the FVU denominator.
        """
        cfg = self.cfg
        x2, lead = self._flat(x, cfg.d_in, "input")
        if y is None:
            if cfg.kind not in ("sae", "crosscoder"):
                raise BioLLMError(f"a {cfg.kind} needs its target activations y.")
            y2 = x2
        else:
            y2, _ = self._flat(y, cfg.d_out, "target")
        if total_variance is None:
            total_variance = (y2 - y2.mean(0)).pow(2).sum()
        zero = y2.new_zeros(())
        auxk_loss = sparsity_loss = zero
        if cfg.activation in ("topk", "batchtopk"):
            with torch.no_grad():
                pre = self.pre_acts(x2)
                _, idx, keep = self._select(pre, learn=self.training)
                aux_idx = self._dead_latents(pre, dead_mask)
            all_idx = idx if aux_idx is None else torch.cat([idx, aux_idx[1]], 1)
            b_sub = self._b_dec() if cfg.apply_b_dec_to_input else None
            vals_all = gather_linear(x2, b_sub, self._W_enc(), self.b_enc, pre, all_idx).relu()
            K = idx.shape[1]
            vals = vals_all[:, :K] if keep is None else vals_all[:, :K] * keep
            out = sparse_decode(vals, idx, self._W_dec()) + self._b_dec()
        else:
            pre = self.pre_acts(x2)
            if cfg.activation == "jumprelu":
                bw = self._bandwidth()
                z = JumpReLU.apply(pre, self.threshold, bw)
                l0 = Step.apply(pre, self.threshold, bw).sum(1).mean()
                sparsity_loss = cfg.l0_coeff * l0
            else:
                z = pre.relu()
                rms = (total_variance / y2.numel()).sqrt().clamp_min(1e-12)
                norms = self._W_dec().norm(dim=1)
                sparsity_loss = cfg.l1_coeff * (z @ norms).mean() / rms
            out = torch.addmm(self._b_dec(), z, self._W_dec())
            with torch.no_grad():
                vals, idx = mask_to_sparse(z.detach(), z.detach() > 0)
        if self.W_skip is not None:
            out = out + x2 @ self.W_skip.T
        e = y2 - out
        fvu = e.pow(2).sum() / total_variance
        if cfg.activation in ("topk", "batchtopk") and aux_idx is not None:
            scale, a_idx = aux_idx
            e_hat = sparse_decode(vals_all[:, K:], a_idx, self._W_dec())
            auxk_loss = scale * (e_hat - e.detach()).pow(2).sum() / total_variance
        return DictionaryOutput(self._unflat(out, lead), vals, idx, fvu, auxk_loss, sparsity_loss)

    def _dead_latents(self, pre: Tensor, dead_mask: Tensor | None):
        """(scale, indices [N, k_aux]) of the strongest dead latents per token, or None."""
        if dead_mask is None:
            return None
        dead = dead_mask.nonzero().flatten()
        if dead.numel() == 0:
            return None
        k_aux = self._W_dec().shape[1] // 2  # heuristic of Gao et al., appendix B.1
        scale = min(dead.numel() / k_aux, 1.0)
        k_aux = min(k_aux, dead.numel())
        _, local = pre.index_select(1, dead).topk(k_aux, dim=1, sorted=False)
        return scale, dead[local]

    def _bandwidth(self) -> float:
        bw = self.cfg.jumprelu_bandwidth or 0.5 * self.cfg.jumprelu_threshold
        return bw if bw > 0 else 1e-3  # Rajamanoharan et al.'s default, before any training

    # ---- decoder geometry --------------------------------------------------------------------
    @torch.no_grad()
    def decoder_norms(self) -> Tensor:
        """Norm of each latent's decoder row [L]; per source [L, S] for crosscoders."""
        return self.W_dec.norm(dim=-1)

    @torch.no_grad()
    def relative_decoder_norms(self, a: int = 0, b: int = 1) -> Tensor:
        """Crosscoder model diffing: ‖d_b‖ / (‖d_a‖ + ‖d_b‖) per latent; 0.5 means shared,
        0 only source a, 1 only source b."""
        if self.cfg.n_sources < 2:
            raise BioLLMError("relative decoder norms need a crosscoder with two or more sources.")
        n = self.decoder_norms()
        return n[:, b] / (n[:, a] + n[:, b]).clamp_min(torch.finfo(n.dtype).tiny)

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        W = self._W_dec()
        eps = torch.finfo(W.dtype).eps
        W.div_(W.norm(dim=1, keepdim=True) + eps)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        if self.W_dec.grad is None:
            return
        W, G = self._W_dec(), self.W_dec.grad.reshape(self.num_latents, -1)
        G.addcmul_(torch.linalg.vecdot(G, W).unsqueeze(1), W, value=-1.0)  # no [L, D] temporaries

    # ---- files -------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write our format: a folder with cfg.json and dictionary.safetensors, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_dir(path) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            write_json(tmp / "cfg.json", to_dict(self.cfg))
        return path

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"kind={c.kind}, activation={c.activation}, d_in={c.d_in}, d_out={c.d_out}, "
                f"num_latents={c.num_latents}, k={c.k}, hookpoint={c.hookpoint!r}")
