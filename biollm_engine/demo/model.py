"""The demo model: a small Pythia-architecture (GPTNeoX) causal LM trained from scratch on C2S
cell-type-prediction prompts, with a plain, deterministic torch loop.

The loss covers the whole sequence, so the model has to learn which genes come together in a
cell (the gene programs its features can then show), plus the answer token weighted as much as
all the other tokens of its sequence together: without that weight the cell type is one token
in a hundred and the classification is learnt far more slowly than the gene statistics.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ..progress import CancelToken, ProgressCallback, ProgressTracker
from .data import Sequences


def gpt_neox_config(tokenizer, layers: int, width: int, heads: int, max_length: int):
    import transformers as tf

    return tf.GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * width,
        max_position_embeddings=max_length, rotary_pct=0.25, use_parallel_residual=True,
        hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id)


@contextlib.contextmanager
def deterministic(seed: int, threads: int):
    """Seeded, deterministic torch on a fixed number of threads; restores the caller's settings."""
    import torch

    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def sequence_loss(model, ids, lengths, answer_pos, answer_weight: float):
    """Next-token cross-entropy over each sequence's real tokens, the answer token up-weighted
    to `answer_weight` × the weight of the rest; returns (loss, answer CE, other-token CE)."""
    import torch
    import torch.nn.functional as F

    T = ids.shape[1]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    targets = ids[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         reduction="none").view(targets.shape)
    valid = mask[:, 1:].float()
    is_answer = torch.zeros_like(valid)
    is_answer[torch.arange(len(ids)), answer_pos - 1] = 1.0
    other = valid - is_answer
    n_other = other.sum(1, keepdim=True).clamp(min=1)
    weights = other / n_other + answer_weight * is_answer
    loss = (ce * weights).sum() / weights.sum()
    answer_ce = (ce * is_answer).sum() / len(ids)
    other_ce = (ce * other).sum() / other.sum().clamp(min=1)
    return loss, answer_ce, other_ce


def train_model(model, seqs: Sequences, train_idx: np.ndarray, *, epochs: int, batch_size: int,
                lr: float, answer_weight: float, seed: int,
                progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> list[dict]:
    """AdamW with a one-cycle schedule over `epochs` shuffled passes; returns per-epoch means."""
    import torch

    ids = torch.from_numpy(seqs.input_ids)
    lengths = torch.from_numpy(seqs.lengths)
    answer_pos = torch.from_numpy(seqs.answer_pos)
    per_epoch = math.ceil(len(train_idx) / batch_size)
    total = epochs * per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    tracker = ProgressTracker("train demo model", total, progress, cancel)
    history = []
    model.train()
    for epoch in range(epochs):
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        sums = np.zeros(3)
        for b in range(per_epoch):
            rows = order[b * batch_size:(b + 1) * batch_size]
            T = int(lengths[rows].max())
            loss, answer_ce, other_ce = sequence_loss(model, ids[rows, :T], lengths[rows],
                                                      answer_pos[rows], answer_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            sums += [loss.item(), answer_ce.item(), other_ce.item()]
            tracker.update(tokens=int(lengths[rows].sum()), loss=loss.item(),
                           answer_ce=answer_ce.item(), message=f"epoch {epoch + 1}/{epochs}")
        history.append(dict(zip(("loss", "answer_ce", "gene_ce"), (sums / per_epoch).tolist()),
                            epoch=epoch + 1))
    model.eval()
    return history


def predict(model, seqs: Sequences, indices: np.ndarray, label_ids: list[int],
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """For each cell: the predicted label (argmax over the label tokens only) and the model's
    unrestricted argmax next token, both at the position after the prompt."""
    import torch

    label_ids_t = torch.tensor(label_ids)
    restricted, free = [], []
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            rows = torch.from_numpy(np.asarray(indices[start:start + batch_size]))
            pos = torch.from_numpy(seqs.answer_pos)[rows]
            T = int(pos.max())  # the prompt only: the answer is what is predicted
            ids = torch.from_numpy(seqs.input_ids)[rows, :T]
            mask = (torch.arange(T)[None, :] < pos[:, None]).long()
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(rows)), pos - 1]
            restricted.append(last[:, label_ids_t].argmax(-1).numpy())
            free.append(last.argmax(-1).numpy())
    return np.concatenate(restricted), np.concatenate(free)
