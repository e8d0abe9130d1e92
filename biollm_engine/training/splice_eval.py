"""Spliced evaluation: how much of the model's behaviour survives the dictionary.

On held-out prompts, the model's next-token cross-entropy is measured three ways: clean, with the
dictionary's reconstruction spliced in where it writes (the hookpoint for an SAE, the target for
a transcoder, every source for a crosscoder), and with that activation zeroed. The fraction of
loss recovered is (zero - spliced) / (zero - clean). The reconstruction is always computed from
the clean forward pass's activations, so a transcoder reads the true MLP input and a crosscoder
the true activations of all its layers.

For cell sentences with the C2S prompt, the model also completes each prompt greedily (the
predicted cell type), with and without the dictionary; `agreement` is the fraction of cells whose
prediction stays the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models import capture, run_to, splice

GENERATED_TOKENS = 8


def reads(dcfg) -> list[str]:
    """Hookpoints a dictionary reads, in the order its input stacks them."""
    return list(dcfg.sources) if dcfg.kind == "crosscoder" else [dcfg.hookpoint]


def writes(dcfg) -> list[str]:
    """Hookpoints a dictionary reconstructs, in the order of its output."""
    return list(dcfg.sources) if dcfg.kind == "crosscoder" else [dcfg.target or dcfg.hookpoint]


def stack_inputs(dcfg, acts: dict) -> torch.Tensor:
    """The dictionary's input from {hookpoint: [n, width]}: [n, sources, width] for a crosscoder."""
    if dcfg.kind == "crosscoder":
        return torch.stack([acts[h] for h in dcfg.sources], dim=1)
    return acts[dcfg.hookpoint]


def split_outputs(dcfg, out: torch.Tensor) -> dict:
    if dcfg.kind == "crosscoder":
        return {h: out[:, i] for i, h in enumerate(dcfg.sources)}
    return {writes(dcfg)[0]: out}


@dataclass
class EvalSet:
    """Held-out prompts: their records, tokens, and whether to compare predicted cell types."""

    records: list[int]
    input_ids: list[torch.Tensor]
    keep: list[torch.Tensor]
    prompts: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def held_out(cls, lm, data, n: int, seed: int, max_length: int | None = None) -> "EvalSet":
        """`n` records drawn with `seed`; a trainer leaves them out of its training data."""
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 7919))
        records = sorted(order[: min(n, len(data))].tolist())
        exs = list(data.examples(lm.tokenizer, indices=records, max_length=max_length))
        prompts = []
        if getattr(data, "kind", None) == "cells":
            full = exs if max_length is None else data.examples(lm.tokenizer, indices=records)
            prompts = [torch.as_tensor(e.input_ids) for e in full]
        return cls(records, [torch.as_tensor(e.input_ids) for e in exs],
                   [torch.as_tensor(e.keep) for e in exs], prompts)


def _clean_acts(lm, dictionary, ids: torch.Tensor) -> dict:
    """The activations the dictionary reads and those it reconstructs, for one prompt [T]."""
    with capture(lm, dict.fromkeys(reads(dictionary.cfg) + writes(dictionary.cfg))) as store:
        run_to(lm, ids[None])
    return {h: a[0] for h, a in store.items()}


@torch.no_grad()
def _reconstruct(dictionary, acts: dict) -> tuple[dict, object]:
    """Reconstructions {hookpoint: [n, width]} from activations holding what the dictionary
    reads (and, for transcoders, the target, which their forward also measures)."""
    dcfg = dictionary.cfg
    target = writes(dcfg)[0]
    y = None if dcfg.kind in ("sae", "crosscoder") else _on(dictionary, acts[target])
    result = dictionary(_inputs(dictionary, acts), y)
    return split_outputs(dcfg, result.out), result


def _on(dictionary, t: torch.Tensor) -> torch.Tensor:
    return t.to(next(dictionary.parameters()).device, torch.float32)


def _inputs(dictionary, acts: dict) -> torch.Tensor:
    dcfg = dictionary.cfg
    return stack_inputs(dcfg, {h: _on(dictionary, acts[h]) for h in reads(dcfg)})


@contextlib.contextmanager
def _replaced(lm, dcfg, values: dict | None):
    """Splice `values` ({hookpoint: [T, width]}) in where the dictionary writes; None: zeros."""
    with contextlib.ExitStack() as stack:
        for h in writes(dcfg):
            if values is None:
                fn = torch.zeros_like
            else:
                def fn(a, v=values[h]):
                    return v.to(a.dtype).reshape(a.shape)
            stack.enter_context(splice(lm, h, fn))
        yield


def _ce(lm, ids: torch.Tensor) -> tuple[float, int]:
    logits = lm.model(input_ids=ids[None], use_cache=False).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[1:], reduction="sum").item(), len(ids) - 1


@contextlib.contextmanager
def _replaced_online(lm, dictionary):
    """Splice the reconstruction computed from each forward's own activations, so that greedy
    decoding can reuse its KV cache (SAEs and transcoders: their input is never downstream of
    where they write). A splice sees the clean activation it replaces: an SAE's input; a
    transcoder reads its input hookpoint, captured earlier in the same forward."""
    dcfg = dictionary.cfg
    target = writes(dcfg)[0]
    with contextlib.ExitStack() as stack:
        store = (stack.enter_context(capture(lm, [dcfg.hookpoint], stop=False))
                 if target != dcfg.hookpoint else None)

        def fn(a):
            x = a if store is None else store[dcfg.hookpoint]
            acts = {dcfg.hookpoint: x.reshape(-1, dcfg.d_in), target: a.reshape(-1, dcfg.d_out)}
            return _reconstruct(dictionary, acts)[0][target].to(a.dtype).reshape(a.shape)

        stack.enter_context(splice(lm, target, fn))
        yield


def _cache_names(model) -> tuple[str, str]:
    """(argument, output field) of the KV cache: `cache` in recent transformers, else
    `past_key_values`."""
    import inspect

    if "cache" in inspect.signature(model.forward).parameters:
        return "cache", "cache"
    return "past_key_values", "past_key_values"


def _greedy(lm, dictionary, ids: torch.Tensor, spliced: bool) -> list[int]:
    """The next GENERATED_TOKENS tokens, greedily, clean or with the dictionary spliced in."""
    if spliced and dictionary.cfg.kind == "crosscoder":
        return _greedy_crosscoder(lm, dictionary, ids)
    arg, field_name = _cache_names(lm.model)
    new, past, step_ids = [], None, ids[None]
    with _replaced_online(lm, dictionary) if spliced else contextlib.nullcontext():
        for _ in range(GENERATED_TOKENS):
            out = lm.model(input_ids=step_ids, use_cache=True, **{arg: past})
            past = getattr(out, field_name)
            tok = int(out.logits[0, -1].argmax())
            new.append(tok)
            if tok == lm.tokenizer.eos_token_id:
                break
            step_ids = ids.new_tensor([[tok]])
    return new


def _greedy_crosscoder(lm, dictionary, ids: torch.Tensor) -> list[int]:
    """Without a KV cache: a crosscoder's reconstruction of an early layer reads later layers,
    so each new token needs the clean pass first."""
    new = []
    for _ in range(GENERATED_TOKENS):
        recon, _ = _reconstruct(dictionary, _clean_acts(lm, dictionary, ids))
        with _replaced(lm, dictionary.cfg, recon):
            logits = lm.model(input_ids=ids[None], use_cache=False).logits[0, -1]
        tok = int(logits.argmax())
        new.append(tok)
        if tok == lm.tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, ids.new_tensor([tok])])
    return new


@torch.no_grad()
def evaluate_dictionary(lm, dictionary, evalset: EvalSet) -> dict[str, float | None]:
    """FVU, L0 and dead fraction on the held-out tokens; for causal models also CE clean /
    spliced / zeroed, loss recovered, and (cells) the agreement of the predicted cell types."""
    dictionary.eval()
    dev = next(dictionary.parameters()).device
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    count, active_sum, tokens = 0, 0.0, 0
    # per reconstructed hookpoint: squared error, sum and sum of squares of the true activations
    err: dict[str, float] = {}
    s1: dict[str, torch.Tensor] = {}
    s2: dict[str, float] = {}
    fired = torch.zeros(dictionary.cfg.num_latents, dtype=torch.bool, device=dev)
    for ids, keep in zip(evalset.input_ids, evalset.keep):
        ids = ids.to(lm.device)
        if len(ids) < 2:
            continue
        acts = _clean_acts(lm, dictionary, ids)
        recon, result = _reconstruct(dictionary, acts)
        kept = keep.to(dev)
        for h, r in recon.items():
            true = acts[h].to(dev, torch.float32)[kept]
            err[h] = err.get(h, 0.0) + (true - r[kept]).pow(2).sum().item()
            s1[h] = s1.get(h, 0.0) + true.sum(0)
            s2[h] = s2.get(h, 0.0) + true.pow(2).sum().item()
        live = result.latent_acts[kept] > 0
        active_sum += live.sum().item()
        tokens += int(kept.sum())
        fired[result.latent_indices[kept][live]] = True
        if not lm.is_causal:  # no next-token loss to compare
            continue
        loss, n = _ce(lm, ids)
        ce["clean"] += loss
        count += n
        for mode, values in (("spliced", recon), ("zero", None)):
            with _replaced(lm, dictionary.cfg, values):
                ce[mode] += _ce(lm, ids)[0]
    var = sum(s2[h] - s1[h].pow(2).sum().item() / tokens for h in s2) if tokens else 0.0
    out: dict[str, float | None] = {
        "fvu": sum(err.values()) / var if var > 0 else None,
        "l0": active_sum / tokens if tokens else None,
        "dead_frac": 1.0 - fired.float().mean().item() if tokens else None,
    }
    if count:
        clean, spliced, zero = (ce[m] / count for m in ("clean", "spliced", "zero"))
        out.update(ce_clean=clean, ce_spliced=spliced, ce_zero=zero, ce_delta=spliced - clean,
                   loss_recovered=(zero - spliced) / (zero - clean) if zero != clean else None)
    if evalset.prompts and lm.is_causal:
        same = [_greedy(lm, dictionary, p.to(lm.device), False)
                == _greedy(lm, dictionary, p.to(lm.device), True) for p in evalset.prompts]
        out["agreement"] = sum(same) / len(same)
    out["prompts"] = len(evalset.input_ids)
    return out
