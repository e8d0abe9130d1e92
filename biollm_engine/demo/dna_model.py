"""The DNA demo model: Evo 2's byte tokens in a Hugging Face tokenizer, a small GPTNeoX trained
from scratch on random crops of both strands, and the baselines its loss is read against.

The tokenizer gives every character its byte value as id (A=65, C=67, G=71, T=84; 0 end of text,
1 padding, as Evo 2's CharLevelTokenizer), so the engine's byte tokens (`--tokenizer byte`) and
the model's own tokenizer (`--tokenizer model`) read a sequence identically.
"""

from __future__ import annotations

import math

import numpy as np

from ..inputs.dna import reverse_complement
from ..progress import CancelToken, ProgressCallback, ProgressTracker

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` with one token per character, its id the byte value."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {0: EOS, 1: PAD, 2: UNK}
    vocab = {special.get(i, chr(i) if 33 <= i <= 126 else f"<0x{i:02X}>"): i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, bos_token=EOS)


def _strands(seqs: list[str]) -> list[np.ndarray]:
    """Both strands of every sequence as byte arrays (genes lie on either strand)."""
    return [np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64)
            for seq in seqs for s in (seq, reverse_complement(seq))]


def train_dna_model(model, seqs: list[str], *, steps: int, batch_size: int, context: int,
                    lr: float, seed: int, progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> list[dict]:
    """Next-base cross-entropy on `steps` batches of random crops (both strands, crops drawn
    in proportion to length); AdamW with a one-cycle schedule. Returns the mean loss of each
    tenth of the run."""
    import torch
    import torch.nn.functional as F

    strands = _strands(seqs)
    lengths = np.array([len(s) for s in strands])
    room = np.maximum(lengths - context, 0) + 1
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    tracker = ProgressTracker("train DNA demo model", steps, progress, cancel)
    every = max(1, steps // 10)
    history, total = [], 0.0
    model.train()
    for step in range(steps):
        which = rng.choice(len(strands), size=batch_size, p=room / room.sum())
        starts = rng.integers(0, room[which])
        ids = torch.from_numpy(np.stack([strands[w][s:s + context]
                                         for w, s in zip(which, starts)]))
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        total += loss.item()
        tracker.update(tokens=ids.numel(), loss=loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            n = (step % every) + 1
            history.append({"step": step + 1, "loss": total / n})
            total = 0.0
    model.eval()
    return history


def heldout_loss(model, seqs: list[str], context: int, batch_size: int = 16) -> float:
    """Mean next-base cross-entropy (nats) over both strands of `seqs`, read in consecutive
    crops of `context` bases (the first base of each crop is not predicted)."""
    import torch
    import torch.nn.functional as F

    crops = [s[i:i + context] for s in _strands(seqs) for i in range(0, len(s) - context + 1,
                                                                     context)]
    total, n = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(crops), batch_size):
            ids = torch.from_numpy(np.stack(crops[b:b + batch_size]))
            logits = model(input_ids=ids).logits[:, :-1]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     ids[:, 1:].reshape(-1), reduction="sum").item()
            n += ids[:, 1:].numel()
    return total / max(n, 1)


def markov_loss(train: list[str], test: list[str], order: int) -> float:
    """Held-out cross-entropy (nats per base) of an order-`order` Markov chain on both strands,
    with add-one smoothing: the k-mer statistics a model has to beat to have learnt more."""
    code = np.full(256, 4, np.int64)
    code[[ord(b) for b in "ACGT"]] = np.arange(4)

    def kmers(seqs):
        for s in _strands(seqs):
            c = code[s]
            if len(c) <= order:
                continue
            win = np.lib.stride_tricks.sliding_window_view(c, order + 1)
            win = win[(win < 4).all(axis=1)]
            yield win @ (4 ** np.arange(order, -1, -1))

    counts = np.ones(4 ** (order + 1))
    for k in kmers(train):
        counts += np.bincount(k, minlength=len(counts))
    probs = counts.reshape(-1, 4) / counts.reshape(-1, 4).sum(axis=1, keepdims=True)
    logp = np.log(probs).ravel()
    nll = [-logp[k] for k in kmers(test)]
    nll = np.concatenate(nll) if nll else np.zeros(1)
    return float(nll.mean())


def base_entropy(seqs: list[str]) -> float:
    """Entropy (nats) of the base composition of both strands: the order-0 baseline."""
    s = np.concatenate(_strands(seqs))
    p = np.array([(s == ord(b)).sum() for b in "ACGT"], float)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


LN4 = math.log(4)
