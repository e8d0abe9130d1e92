"""BatchTopK's inference threshold from harvested activations.

A BatchTopK dictionary keeps the k·N largest activations of each batch of N tokens while it
trains, and a threshold after: what a token's latents are must not depend on the tokens read
beside it. Ours learn the threshold as they train; Goodfire's Evo 2 SAE ships without one. As
Bussmann et al. (2024) estimate it: the mean, over batches of the data, of the smallest
activation each batch keeps.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..errors import BioLLMError
from .activations import batch_topk_mask
from .dictionary import Dictionary


@torch.no_grad()
def calibrate_threshold(d: Dictionary, batches: Iterable[torch.Tensor]) -> dict:
    """Set `d`'s BatchTopK threshold to the mean smallest kept activation over `batches`
    (tokens x d_in each; k·N kept of each batch of N) -> what was measured."""
    if d.cfg.activation != "batchtopk":
        raise BioLLMError(f"the dictionary is {d.cfg.activation}, not batchtopk: only BatchTopK "
                          "needs a threshold calibrated.")
    if d.cfg.kind == "crosscoder":  # (ours learn theirs while training)
        raise BioLLMError("calibrate reads one hookpoint; a crosscoder reads several.")
    lowest, tokens, kept = [], 0, 0
    for x in batches:
        x2 = x.to(d.device, d.dtype).reshape(-1, d.cfg.d_in)
        if not len(x2):
            continue
        pre = d.pre_acts(x2)
        mask, low = batch_topk_mask(pre, d.cfg.k)
        lowest.append(float(low))
        tokens += len(x2)
        kept += int(mask.sum())
    if not lowest:
        raise BioLLMError("no activations to calibrate on: the cache is empty.")
    threshold = sum(lowest) / len(lowest)
    d.threshold.fill_(threshold)
    # what a token then keeps, on the last batch: about k where the batches are alike
    l0 = float((d.pre_acts(x2) > threshold).sum(1).float().mean())
    return {"threshold": threshold, "batches": len(lowest), "tokens": tokens,
            "l0_in_batches": kept / tokens, "l0_at_threshold_last_batch": l0}
