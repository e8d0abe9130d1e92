"""Batched predictions: greedy C2S answers and multiple-choice log-likelihood scores.

Both run under whatever splices are active, so the same code predicts with and without
dictionaries (`spliced`).
"""

from __future__ import annotations

import contextlib

import torch

from ..training.splice_eval import _cache_names, _replaced_online

STOP = ("\n", ".")


@contextlib.contextmanager
def spliced(lm, dictionaries):
    """Every dictionary's reconstruction in place of the activation it writes, computed from
    each forward's own activations (so generation keeps its KV cache)."""
    with contextlib.ExitStack() as stack:
        for d in dictionaries or ():
            stack.enter_context(_replaced_online(lm, d))
        yield


def _pad(rows: list[list[int]], pad_id: int, left: bool):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, sl] = torch.as_tensor(r)
        mask[i, sl] = 1
    return ids, mask


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def cut_answer(text: str) -> str:
    """The answer up to the first newline or period."""
    for s in STOP:
        text = text.split(s, 1)[0]
    return text.strip()


@torch.inference_mode()
def generate(lm, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy answers to a batch of token-id prompts: left-padded, one KV-cached step per token,
    each row stopping at end-of-sequence, newline or period."""
    tok, model = lm.tokenizer, lm.model
    arg, out_field = _cache_names(model)
    ids, mask = _pad(prompts, _pad_id(tok), left=True)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    new = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    past, step_ids, step_pos = None, ids, pos
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                    use_cache=True, **{arg: past})
        past = getattr(out, out_field)
        nxt = out.logits[:, -1].argmax(-1).cpu()
        for i in (~done).nonzero().flatten().tolist():
            t = int(nxt[i])
            if t == tok.eos_token_id:
                done[i] = True
                continue
            new[i].append(t)
            if any(s in tok.decode(new[i][-1:]) for s in STOP):
                done[i] = True
        if done.all():
            break
        step_ids = nxt[:, None].to(lm.device)
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
    return [cut_answer(tok.decode(n, skip_special_tokens=True)) for n in new]


def option_ids(tokenizer, options: list[str]) -> list[list[int]]:
    """Each option as the tokens that follow 'Answer:' (a space, then the option)."""
    return [tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in options]


@torch.inference_mode()
def score_options(lm, prompts: list[list[int]], options: list[list[int]],
                  batch_size: int) -> torch.Tensor:
    """Total log-likelihood [cells, options] of each option's tokens after each prompt.

    Options of one token each need one forward per prompt; longer ones one per (prompt, option).
    """
    if all(len(o) == 1 for o in options):
        ids, mask = _pad(prompts, _pad_id(lm.tokenizer), left=False)
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                          use_cache=False).logits
        last = logits[torch.arange(len(prompts)), mask.sum(1).to(lm.device) - 1]
        return last.float().log_softmax(-1)[:, [o[0] for o in options]].cpu()
    K = len(options)
    pairs = [(c, k) for c in range(len(prompts)) for k in range(K)]
    scores = torch.empty(len(prompts) * K)
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        rows = [prompts[c] + options[k] for c, k in chunk]
        ids, mask = _pad(rows, _pad_id(lm.tokenizer), left=False)
        logp = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                        use_cache=False).logits.float().log_softmax(-1).cpu()
        for j, (c, k) in enumerate(chunk):
            n, L = len(prompts[c]), len(options[k])
            tgt = torch.as_tensor(options[k])
            scores[s + j] = logp[j, n - 1:n - 1 + L].gather(1, tgt[:, None]).sum()
    return scores.view(len(prompts), K)
