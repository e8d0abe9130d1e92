"""Crosscoders across two models (model diffing): a base model and its fine-tuned version.

One crosscoder reads the same hookpoint of both models on the same tokens; its sources are
named 'base:HP' and 'finetuned:HP' and `DictionaryConfig.models` maps each label to its model.
Tokens align only if both models tokenize alike, so their vocabularies must be equal; from two
activation caches, both must hold the same tokens (record, position, token_id) in the same
shard layout, so that one shuffle seed draws the same rows from both.

After training, each latent's relative decoder norm r = |d_finetuned| / (|d_base| + |d_finetuned|)
sorts it as base-only (r < 0.1), shared (0.1 <= r <= 0.9) or fine-tuned-only (r > 0.9), the
thresholds of Anthropic's crosscoder model-diffing work (Lindsey et al., 2024).
"""

from __future__ import annotations

from typing import Iterator, Sequence

from ..errors import BioLLMError

LABELS = ("base", "finetuned")
THRESHOLDS = (0.1, 0.9)


def source_name(label: str, hookpoint: str) -> str:
    return f"{label}:{hookpoint}"


def split_source(name: str) -> tuple[str | None, str]:
    """('base', 'layers.3') for 'base:layers.3'; (None, 'layers.3') for a plain hookpoint."""
    label, sep, hookpoint = name.partition(":")
    return (label, hookpoint) if sep else (None, name)


def check_pair(base, finetuned, hookpoint: str) -> int:
    """Both loaded models tokenize alike and have one width at `hookpoint`; returns the width."""
    from ..models import resolve_hookpoint

    if base.tokenizer.get_vocab() != finetuned.tokenizer.get_vocab():
        raise BioLLMError(f"{base.name} and {finetuned.name} have different tokenizers; a "
                          "crosscoder across models needs the same tokenizer (same vocabulary) "
                          "so that both read the same tokens.")
    widths = [resolve_hookpoint(lm, hookpoint).width for lm in (base, finetuned)]
    if widths[0] != widths[1]:
        raise BioLLMError(f"{hookpoint} is {widths[0]} wide in {base.name} but {widths[1]} in "
                          f"{finetuned.name}; a crosscoder across models needs equal widths.")
    return widths[0]


def pair_batches(lms: dict, examples: Sequence, hookpoint: str,
                 batch_size: int) -> Iterator[dict]:
    """Batches {'base:HP': [n, d], 'finetuned:HP': [n, d]} of the same tokens in both models
    (the records of one chunk: they are held in memory together)."""
    from ..harvest import live_batches

    # one model after the other, not interleaved: each generator holds torch.inference_mode
    # open while suspended, and interleaving them leaves it on after both finish
    streams = [list(live_batches(lms[label], examples, [hookpoint], batch_size))
               for label in LABELS]
    for parts in zip(*streams, strict=True):
        if len({len(p[hookpoint]) for p in parts}) > 1:
            raise BioLLMError("the two models kept different tokens of the same records; they "
                              "need the same tokenizer.")
        yield {source_name(label, hookpoint): p[hookpoint] for label, p in zip(LABELS, parts)}


class PairedCache:
    """Two activation caches of the same tokens read as one, with sources 'base:HP' and
    'finetuned:HP' (what `CacheStream` and the trainer need of a cache)."""

    def __init__(self, base_dir, finetuned_dir):
        from ..cache import ActivationCache

        self.caches = {LABELS[0]: ActivationCache(base_dir), LABELS[1]: ActivationCache(finetuned_dir)}
        a, b = self.caches.values()
        if a.num_tokens != b.num_tokens or not a.sources()[["record", "position", "token_id"]] \
                .equals(b.sources()[["record", "position", "token_id"]]):
            raise BioLLMError(f"the caches {a.dir} and {b.dir} hold different tokens (record, "
                              "position, token_id); harvest both models on the same data with "
                              "the same options.")
        if [s["tokens"] for s in a.shards] != [s["tokens"] for s in b.shards]:
            raise BioLLMError(f"the caches {a.dir} and {b.dir} are split into shards differently; "
                              "harvest both with the same --shard-tokens.")
        self.meta = a.meta
        self.widths = {source_name(label, h): w for label, c in self.caches.items()
                       for h, w in c.widths.items()}
        self.hookpoints = list(self.widths)

    def model(self, label: str) -> str | None:
        return self.caches[label].meta.get("model")

    def iter_batches(self, names: Sequence[str], batch_size: int, shuffle: bool = True,
                     seed: int = 0) -> Iterator[dict]:
        # equal shard layouts and one seed: both caches shuffle their rows identically
        wanted = [split_source(n) for n in names]
        streams = [self.caches[label].iter_batches([h], batch_size, shuffle=shuffle, seed=seed)
                   for label, h in wanted]
        for parts in zip(*streams, strict=True):
            yield {n: p[h] for n, (_, h), p in zip(names, wanted, parts)}


def decoder_norm_shares(dictionary) -> dict:
    """For a two-source crosscoder: the share of latents specific to each source or shared,
    by relative decoder norm, and each source's mean decoder norm."""
    import torch

    sources = dictionary.cfg.sources
    names = [split_source(s)[0] or s for s in sources]
    r = dictionary.relative_decoder_norms(0, 1)
    low, high = THRESHOLDS
    norms = dictionary.decoder_norms().mean(0)
    return {
        "relative_norm": f"|d_{names[1]}| / (|d_{names[0]}| + |d_{names[1]}|)",
        "thresholds": list(THRESHOLDS),
        f"{names[0]}_only": float((r < low).float().mean()),
        "shared": float(((r >= low) & (r <= high)).float().mean()),
        f"{names[1]}_only": float((r > high).float().mean()),
        "mean_norm": {s: float(n) for s, n in zip(sources, norms)},
        "histogram": torch.histc(r.float(), bins=10, min=0.0, max=1.0).int().tolist(),
    }


def evaluate_pair(lms: dict, dictionary, evalset) -> dict:
    """A two-model crosscoder on held-out prompts: FVU overall and per model, L0, dead fraction,
    and per model the CE clean / with that model's reconstruction spliced in / zeroed."""
    import torch

    from ..models import capture, run_to, splice
    from .splice_eval import _ce, _reconstruct

    dcfg = dictionary.cfg
    dictionary.eval()
    dev = next(dictionary.parameters()).device
    place = {split_source(s)[0]: (s, split_source(s)[1]) for s in dcfg.sources}
    err = dict.fromkeys(dcfg.sources, 0.0)
    s1: dict = dict.fromkeys(dcfg.sources, 0.0)
    s2 = dict.fromkeys(dcfg.sources, 0.0)
    ce = {(label, m): 0.0 for label in place for m in ("clean", "spliced", "zero")}
    fired = torch.zeros(dcfg.num_latents, dtype=torch.bool, device=dev)
    count, active, tokens = 0, 0.0, 0
    with torch.no_grad():
        for ids, keep in zip(evalset.input_ids, evalset.keep):
            if len(ids) < 2:
                continue
            acts = {}
            for label, (src, hp) in place.items():
                with capture(lms[label], [hp]) as store:
                    run_to(lms[label], ids[None].to(lms[label].device))
                acts[src] = store[hp][0]
            recon, result = _reconstruct(dictionary, acts)
            kept = keep.to(dev)
            for src, r in recon.items():
                true = acts[src].to(dev, torch.float32)[kept]
                err[src] += (true - r[kept]).pow(2).sum().item()
                s1[src] = s1[src] + true.sum(0)
                s2[src] += true.pow(2).sum().item()
            live = result.latent_acts[kept] > 0
            active += live.sum().item()
            tokens += int(kept.sum())
            fired[result.latent_indices[kept][live]] = True
            count += len(ids) - 1
            for label, (src, hp) in place.items():
                lm = lms[label]
                if not lm.is_causal:
                    continue
                x = ids.to(lm.device)
                ce[label, "clean"] += _ce(lm, x)[0]
                for mode, fn in (("spliced", lambda a, v=recon[src]: v.to(a.dtype).reshape(a.shape)),
                                 ("zero", torch.zeros_like)):
                    with splice(lm, hp, fn):
                        ce[label, mode] += _ce(lm, x)[0]
    if not tokens:
        raise BioLLMError("the evaluation prompts hold no tokens to evaluate on.")
    var = {s: s2[s] - s1[s].pow(2).sum().item() / tokens for s in dcfg.sources}
    out: dict = {"fvu": sum(err.values()) / sum(var.values()), "l0": active / tokens,
                 "dead_frac": 1.0 - fired.float().mean().item()}
    for label, (src, _) in place.items():
        out[f"fvu_{label}"] = err[src] / var[src] if var[src] > 0 else None
        if not lms[label].is_causal or not count:
            continue
        clean, spliced, zero = (ce[label, m] / count for m in ("clean", "spliced", "zero"))
        out.update({f"ce_clean_{label}": clean, f"ce_spliced_{label}": spliced,
                    f"ce_zero_{label}": zero, f"ce_delta_{label}": spliced - clean,
                    f"loss_recovered_{label}": (zero - spliced) / (zero - clean)
                    if zero != clean else None})
    out["prompts"] = len(evalset.input_ids)
    return out
