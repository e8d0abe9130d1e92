"""Our TrainStep against eai-sparsify 1.3.3's training step, same activations and settings.

Activations: synthetic but not trivially reconstructible: each token is a sparse, heavy-tailed
(log-normal magnitudes, Zipf-like feature frequencies) combination of 4·d ground-truth
directions, plus a dense rank-d/16 component and isotropic noise. Both trainers see the same
batches in the same order; steps alternate (ours, theirs) so machine load hits both alike.
sparsify's step is its trainer's inner loop for one hookpoint (bias init on the first batch,
unit-norm decoder, forward with the dead mask, fvu + auxk_alpha·auxk backward, parallel
gradient removal, torch Adam, linear warm-up schedule, dead-latent counters).

    python bench/trainer_vs_sparsify.py            # width 1024, 16384 latents, k=32, 4096 tokens
    python bench/trainer_vs_sparsify.py --quick    # small sizes, seconds
    python bench/trainer_vs_sparsify.py --device cuda --batch 16384   # on a GPU: both under
        bfloat16 autocast (ours as the trainer runs it, sparsify's own), sparsify's Triton decoder
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from biollm_engine.dictionaries import Dictionary, DictionaryConfig  # noqa: E402
from biollm_engine.training.step import TrainStep  # noqa: E402


class Activations:
    """A fixed random generative model of activations; batch(i) is deterministic."""

    def __init__(self, d: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.d, self.m = d, 4 * d
        self.features = torch.nn.functional.normalize(torch.randn(self.m, d, generator=g), dim=1)
        self.freq = (1.0 / torch.arange(1, self.m + 1).float() ** 0.7)
        self.freq = self.freq / self.freq.sum() * 24  # about 24 true features per token
        self.lowrank = torch.randn(d // 16, d, generator=g) / math.sqrt(d // 16)
        self.seed = seed

    def batch(self, i: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100003 + i + 1)
        on = torch.rand(n, self.m, generator=g) < self.freq
        mag = torch.exp(torch.randn(n, self.m, generator=g) * 0.8) * on
        dense = torch.randn(n, self.lowrank.shape[0], generator=g) @ self.lowrank
        noise = 0.05 * torch.randn(n, self.d, generator=g)
        return mag @ self.features + 0.5 * dense + noise + 0.3


class SparsifyStep:
    """sparsify 1.3.3's trainer loop body for one hookpoint, without the model around it."""

    def __init__(self, d: int, latents: int, k: int, warmup: int, total: int, auxk_alpha: float,
                 dead_threshold: int, device: str = "cpu"):
        from sparsify import SparseCoder, SparseCoderConfig
        from transformers import get_linear_schedule_with_warmup

        self.sae = SparseCoder(d, SparseCoderConfig(num_latents=latents, k=k), device,
                               dtype=torch.float32)
        self.opt = torch.optim.Adam(self.sae.parameters(),
                                    lr=2e-4 / (latents / 2**14) ** 0.5)
        self.sched = get_linear_schedule_with_warmup(self.opt, warmup, total)
        self.auxk_alpha, self.dead_threshold = auxk_alpha, dead_threshold
        self.since_fired = torch.zeros(latents, dtype=torch.long, device=device)
        self.step_i = 0

    def step(self, x: torch.Tensor) -> float:
        sae = self.sae
        if self.step_i == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead = self.since_fired > self.dead_threshold if self.auxk_alpha > 0 else None
        out = sae(x=x, y=x, dead_mask=dead)
        did_fire = torch.zeros_like(self.since_fired, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + self.auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        self.sched.step()
        self.since_fired += x.shape[0]
        self.since_fired[did_fire] = 0
        self.step_i += 1
        return float(out.fvu)

    @torch.no_grad()
    def eval_fvu(self, x: torch.Tensor) -> float:
        self.sae.set_decoder_norm_to_unit_norm()
        return float(self.sae(x).fvu)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_matmul(n: int, d: int, latents: int, device: str, reps: int = 3) -> float:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, d, device=device, dtype=dtype)
    b = torch.randn(d, latents, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps each")
    p.add_argument("--steps", type=int, default=8, help="timed steps each")
    p.add_argument("--lr-warmup", type=int, default=5, help="learning-rate warm-up steps")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of ours")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    a = p.parse_args(argv)
    dev = a.device
    if dev == "cpu":  # sparsify's Triton decoder is for GPUs; on a CPU it uses its eager one
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    autocast = torch.bfloat16 if dev == "cuda" else None
    if a.quick:
        a.d, a.batch, a.steps = 256, 1024, 6
    latents = a.d * a.expansion
    total = a.warmup_steps + a.steps
    where = (f"bf16 autocast on {torch.cuda.get_device_name()}" if dev == "cuda"
             else f"fp32 CPU, {torch.get_num_threads()} threads")
    print(f"width {a.d}, {latents} latents, k={a.k}, batch {a.batch} tokens, {where}; "
          f"activations: synthetic sparse heavy-tailed features + low-rank + noise")
    data = Activations(a.d)
    torch.manual_seed(0)
    ours_d = Dictionary(DictionaryConfig(d_in=a.d, num_latents=latents, k=a.k)).to(dev)
    ours = TrainStep(ours_d, warmup_steps=a.lr_warmup, total_steps=total, autocast_dtype=autocast)
    torch.manual_seed(0)
    theirs = SparsifyStep(a.d, latents, a.k, a.lr_warmup, total, ours.auxk_alpha,
                          ours.dead_feature_threshold, dev)
    t_ours, t_theirs, c_ours, c_theirs = [], [], [], []
    for i in range(total):
        x = data.batch(i, a.batch).to(dev)
        sync(dev)
        t, c = time.perf_counter(), time.process_time()
        m = ours.step(x)
        sync(dev)
        t_ours.append(time.perf_counter() - t)
        c_ours.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        f = theirs.step(x)
        sync(dev)
        t_theirs.append(time.perf_counter() - t)
        c_theirs.append(time.process_time() - c)
        print(f"step {i}: ours {t_ours[-1]:.3f} s wall {c_ours[-1]:.3f} s cpu (fvu "
              f"{m['fvu']:.4f}), sparsify {t_theirs[-1]:.3f} s wall {c_theirs[-1]:.3f} s cpu "
              f"(fvu {f:.4f})")
    if a.profile:
        from torch.profiler import profile

        with profile() as prof:
            ours.step(data.batch(total, a.batch).to(dev))
        key = "self_cuda_time_total" if dev == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=20))
    held_out = data.batch(10**6, a.batch).to(dev)
    ours_d.eval()
    with torch.no_grad():
        fvu_ours = float(ours_d(held_out).fvu)
    fvu_theirs = theirs.eval_fvu(held_out)
    s_ours = statistics.median(t_ours[a.warmup_steps:])
    s_theirs = statistics.median(t_theirs[a.warmup_steps:])
    cpu_ratio = statistics.median(c_theirs[a.warmup_steps:]) / statistics.median(
        c_ours[a.warmup_steps:])
    t_mm = time_matmul(a.batch, a.d, latents, dev)
    gflops = 2 * a.batch * a.d * latents / t_mm / 1e9
    tok_ours, tok_theirs = a.batch / s_ours, a.batch / s_theirs
    print(f"dense encoder matmul {a.batch}x{a.d} @ {a.d}x{latents}: {t_mm:.3f} s, "
          f"{gflops:.0f} GFLOP/s; matmul-bound limit {a.batch / t_mm:.0f} tok/s")
    print(f"achieved fraction of the matmul limit: ours {t_mm / s_ours:.0%}, "
          f"sparsify {t_mm / s_theirs:.0%} (median step ours {s_ours:.3f} s, sparsify "
          f"{s_theirs:.3f} s)")
    print(f"CPU-time ratio (sparsify / ours, insensitive to other processes' load): "
          f"{cpu_ratio:.2f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"held-out FVU after {total * a.batch} tokens: ours {fvu_ours:.4f}, "
          f"sparsify {fvu_theirs:.4f}")
    print(f"speedup vs sparsify: {tok_ours / tok_theirs:.2f} (ours {tok_ours:.0f} tok/s, "
          f"sparsify {tok_theirs:.0f} tok/s, FVU ours {fvu_ours:.4f}, sparsify {fvu_theirs:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
