"""Encode harvested tokens into sparse feature activations (CSR tokens x features, float32).

Two sources, one output (`EncodedChunk`s with global token indices and sources):
- `encode_cache`: an `ActivationCache`, read in chunks of `chunk_tokens` (bounded memory);
- `encode_live`: a model and tokenized examples, captured at the dictionary's hookpoint.

`read_ahead` makes chunks on a worker thread while the caller uses the previous ones.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from ..errors import BioLLMError
from ..progress import CancelToken, ProgressCallback, ProgressTracker
from .chunks import SOURCE_FIELDS, EncodedChunk, TokenSources


def sparse_from_topk(values, indices, num_features: int) -> sp.csr_matrix:
    """(values, indices) [N, k] (zeros allowed as padding) -> CSR [N, num_features], indices
    sorted in each row."""
    values = np.asarray(values, dtype=np.float32)
    indices = np.asarray(indices, dtype=np.int64)
    n, k = values.shape
    keep = values != 0
    if keep.all():
        m = sp.csr_matrix((values.ravel(), indices.ravel().astype(np.int32),
                           np.arange(0, n * k + 1, k)), shape=(n, num_features))
    else:  # padding dropped before scipy sorts: ReLU-style rows pad to the longest row
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        m = sp.csr_matrix((values[keep], indices[keep].astype(np.int32), indptr),
                          shape=(n, num_features))
    m.sum_duplicates()  # sorts indices; a padding scheme may repeat an index
    m.eliminate_zeros()  # duplicates may cancel
    return m


def dense_to_csr(a: np.ndarray) -> sp.csr_matrix:
    """float32 [N, F] -> CSR of its nonzero entries (what `sp.csr_matrix(a)` gives, made
    straight from the mask: scipy goes through COO and checks, slower than this on a chunk)."""
    a = np.asarray(a, dtype=np.float32)
    nonzero = a != 0
    indptr = np.zeros(len(a) + 1, np.int64)
    np.cumsum(nonzero.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(nonzero)[1].astype(np.int32)
    return sp.csr_matrix((a[nonzero], indices, indptr), shape=a.shape)


ENCODE_ROWS = 4096  # tokens encoded at once (BatchTopK before training picks over them)


def encode_activations(dictionary, x, batch_size: int = ENCODE_ROWS) -> sp.csr_matrix:
    """Encode activations [N, d_in] (tensor or array) with `dictionary.encode_sparse`."""
    import torch

    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] != dictionary.cfg.d_in:
        raise BioLLMError(f"activations of shape {tuple(x.shape)} do not fit the dictionary "
                          f"(d_in {dictionary.cfg.d_in}); use the dictionary of this hookpoint.")
    parts = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(dictionary.device, dictionary.dtype)
            vals, idx = dictionary.encode_sparse(xb)
            parts.append(sparse_from_topk(vals.float().cpu().numpy(), idx.cpu().numpy(),
                                          dictionary.num_latents))
    if not parts:
        return sp.csr_matrix((0, dictionary.num_latents), dtype=np.float32)
    return sp.vstack(parts, format="csr")


def encode_cache(cache, dictionary, hookpoint: str | None = None, chunk_tokens: int = 16384,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                 sources: TokenSources | None = None) -> Iterator[EncodedChunk]:
    """Stream an activation cache through the dictionary, in token order. `sources`: the
    cache's, where the caller holds them already (32 bytes a token: not twice)."""
    hookpoint = hookpoint or dictionary.cfg.hookpoint
    cache.check_hookpoints([hookpoint])
    from ..dictionaries.formats import check_fits

    check_fits(dictionary, cache.widths[hookpoint])
    if sources is None:
        sources = TokenSources.from_any(cache.sources())
    n = cache.num_tokens
    tracker = ProgressTracker("encode", total=n, callback=progress, cancel=cancel)
    for start in range(0, n, chunk_tokens):
        stop = min(n, start + chunk_tokens)
        acts = encode_activations(dictionary, cache.read(hookpoint, start, stop))
        yield EncodedChunk(acts, sources[start:stop], start)
        tracker.update(steps=stop - start, tokens=stop - start)


def firing_threshold(d):
    """What a latent's pre-activation must exceed to fire, where each latent fires by itself
    (ReLU: 0; JumpReLU: its threshold; BatchTopK past training: its inference threshold);
    None where latents are compared (TopK, BatchTopK in training)."""
    import torch

    act = d.cfg.activation
    if act == "relu":
        return torch.zeros((), dtype=d.dtype, device=d.device)
    if act == "jumprelu":
        return d.threshold
    if act == "batchtopk" and not d.training and float(d.threshold) >= 0:
        return d.threshold.clamp_min(0)
    return None


class FeatureEncoder:
    """Activations of chosen features only: dense float32 [N, len(features)], equal to those
    columns of `encode_activations`.

    Latents that fire by a per-latent rule (ReLU, JumpReLU, BatchTopK past its training, with
    its inference threshold) need only the chosen rows of the encoder, so the cost no longer
    grows with the dictionary's width; TopK compares latents, so it encodes all and picks.
    """

    def __init__(self, dictionary, features):
        import torch

        self.dictionary = d = dictionary
        self.features = torch.as_tensor(np.asarray(features, dtype=np.int64), device=d.device)
        threshold = firing_threshold(d)
        self.elementwise = threshold is not None
        if self.elementwise:
            f = self.features
            self.W = d._W_enc()[f].T.contiguous()
            self.b = d.b_enc[f]
            self.threshold = threshold[f] if threshold.ndim else threshold
        else:
            col = torch.full((d.num_latents,), -1, dtype=torch.long, device=d.device)
            col[self.features] = torch.arange(len(self.features), device=d.device)
            self.column = col

    def __call__(self, x):
        """x [N, d_in] -> torch float32 [N, F] on the dictionary's device."""
        import torch

        d = self.dictionary
        with torch.inference_mode():
            x = torch.as_tensor(x).to(d.device, d.dtype)
            if self.elementwise:
                x2, _ = d._flat(x, d.cfg.d_in, "input")
                pre = torch.addmm(self.b, d._input(x2), self.W)
                return (pre * (pre > self.threshold)).float()
            vals, idx = d.encode_sparse(x)
            cols = self.column[idx]
            hit = cols >= 0
            out = torch.zeros(len(x), len(self.features), dtype=torch.float32, device=d.device)
            rows = torch.arange(len(x), device=d.device)[:, None].expand_as(idx)
            # summed like `sparse_from_topk`, should padding repeat an index
            out.index_put_((rows[hit], cols[hit]), vals[hit].float(), accumulate=True)
            return out


def encode_live(lm, examples: Iterable, dictionary, hookpoint: str | None = None,
                batch_size: int = 8, max_length: int | None = None,
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                total: int | None = None, features=None) -> Iterator[EncodedChunk]:
    """Run the model on tokenized examples and encode the kept tokens at the hookpoint, in the
    same token order a harvest writes (so it equals `encode_cache` on that harvest).

    With `features`, each chunk holds only those features' columns, in that order (see
    `FeatureEncoder`: cheaper when few of a wide dictionary's features are wanted).
    """
    import torch

    from ..dictionaries.formats import check_features, check_fits
    from ..harvest import kept_activations
    from ..models import resolve_hookpoint

    hp = resolve_hookpoint(lm, hookpoint or dictionary.cfg.hookpoint)
    check_fits(dictionary, hp.width)
    if features is not None:
        encoder = FeatureEncoder(dictionary, check_features(features, dictionary.num_latents))

        def encode(x):
            return dense_to_csr(encoder(x).cpu().numpy())
    else:
        def encode(x):
            return encode_activations(dictionary, x)
    tracker = ProgressTracker("encode", total=total, callback=progress, cancel=cancel)
    start = 0
    for acts, src, n_examples in kept_activations(lm, examples, [hp.name], batch_size, max_length,
                                                  dtype=torch.float32):
        sources = TokenSources(*(src[name].numpy() for name in SOURCE_FIELDS))
        yield EncodedChunk(encode(acts[hp.name]), sources, start)
        start += len(sources)
        tracker.update(steps=n_examples, tokens=len(sources))


def firing_counts(lm, examples: Iterable, dictionary, hookpoint: str | None = None,
                  batch_size: int = 8, max_length: int | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                  total: int | None = None) -> np.ndarray:
    """Tokens each feature fires on (int64 [num_latents]): the counts of `encode_live`'s chunks
    without making them. The activations stay where the model ran and are encoded in
    `encode_activations`' slices (so the same values), and only the counts reach the CPU."""
    import torch

    from ..dictionaries.formats import check_fits
    from ..harvest import kept_activations
    from ..models import resolve_hookpoint

    hp = resolve_hookpoint(lm, hookpoint or dictionary.cfg.hookpoint)
    check_fits(dictionary, hp.width)
    tracker = ProgressTracker("encode", total=total, callback=progress, cancel=cancel)
    d, n = dictionary, dictionary.num_latents
    threshold = firing_threshold(d)
    positive = threshold is not None and bool((threshold >= 0).all())
    counts = torch.zeros(n, dtype=torch.int64, device=d.device)
    with torch.inference_mode():
        for acts, _, n_examples in kept_activations(lm, examples, [hp.name], batch_size,
                                                    max_length, dtype=torch.float32,
                                                    device=None):
            x = acts[hp.name]
            for start in range(0, len(x), ENCODE_ROWS):
                xb = x[start:start + ENCODE_ROWS].to(d.device, d.dtype)
                if threshold is not None:  # no sparse values needed: which latents pass
                    pre = d.pre_acts(d._flat(xb, d.cfg.d_in, "input")[0])
                    if not torch.isnan(pre.sum()):  # NaN pads rows of the sparse encoding
                        fired = pre > threshold
                        if not positive:  # a zero passing a negative threshold is no value
                            fired &= pre != 0
                        counts += fired.sum(0)
                        continue
                vals, idx = d.encode_sparse(xb)
                # a row's nonzero latents are distinct, so this is the CSR's column count
                counts += torch.bincount(idx[vals != 0], minlength=n)
            tracker.update(steps=n_examples, tokens=len(x))
    return counts.cpu().numpy()


_END = object()


def read_ahead(items: Iterable, depth: int = 2) -> Iterator:
    """Yield `items`, made on a worker thread up to `depth` ahead of the caller, so that making
    them (a model's forward: torch releases the GIL in its kernels, a GPU runs by itself)
    overlaps what the caller does with each. An error making them is raised here; a caller that
    stops early stops the worker after the item in hand."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((item, None)):
                    break
            put((_END, None))
        except BaseException as e:  # re-raised in the caller's thread
            put((_END, e))
        finally:
            if hasattr(it, "close"):  # a generator's own cleanup runs on its thread
                it.close()

    worker = threading.Thread(target=work, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = q.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()
