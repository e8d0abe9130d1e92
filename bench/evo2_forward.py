"""Forward time of an Evo 2 architecture on this GPU, to set `biollm tracks`' CPU side against.

Builds vortex's StripedHyena from one of evo2's own configurations (default evo2-7b-8k) with
random weights (no weights can be downloaded here) in the dtypes evo2's checkpoint loading sets,
FlashAttention and FP8 projections off, and times its forward over batches of 8 windows of 1024
bytes; prints the time for 1 Mb read at stride 512 (1,953 windows), as bench/tracks_speed.py
reads it. Needs a CUDA GPU and `pip install 'biollm-workbench[evo2]'` (evo2, vtx, FlashAttention).

    python bench/evo2_forward.py [evo2-7b-8k | evo2-1b-8k | ...]
"""
import sys
import time

import torch

from biollm_engine.models.evo2 import random_striped_hyena

if not torch.cuda.is_available():
    raise SystemExit("bench/evo2_forward.py needs a CUDA GPU")
name = sys.argv[1] if len(sys.argv) > 1 else "evo2-7b-8k"
t = time.perf_counter()
torch.manual_seed(0)
m = random_striped_hyena(name)
print(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e9:.2f} B parameters, built in "
      f"{time.perf_counter() - t:.1f} s", flush=True)
ids = torch.randint(65, 90, (8, 1024), device="cuda")
with torch.inference_mode():
    for _ in range(2):
        m(ids)
    torch.cuda.synchronize()
    n = 20
    t = time.perf_counter()
    for _ in range(n):
        m(ids)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / n
windows = 1953  # 1 Mb, window 1024, stride 512
print(f"batch of 8 x 1024: {dt * 1e3:.1f} ms; 1 Mb (1953 windows): {dt * windows / 8:.1f} s "
      "forward")
