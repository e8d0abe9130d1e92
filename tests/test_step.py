"""TrainStep: sparsify's recipe step for step, exact resume, unit-norm decoders, AuxK."""

from __future__ import annotations

import math

import pytest
import torch

from biollm_engine.dictionaries import Dictionary, DictionaryConfig
from biollm_engine.errors import BioLLMError
from biollm_engine.training.step import TrainStep


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def acts(tiny_model_dirs, pbmc):
    from test_dictionaries import capture_activations, cell_sentences

    return capture_activations(tiny_model_dirs("gpt_neox"), cell_sentences(pbmc, n_cells=60))


def batches(x, n, size=128, seed=0, y=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        i = torch.randint(0, x.shape[0], (size,), generator=g)
        yield (x[i], None if y is None else y[i])


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return Dictionary(DictionaryConfig(**{"d_in": 64, "num_latents": 128, "k": 8, **kw}))


@pytest.mark.parametrize("kind,activation", [("sae", "topk"), ("sae", "batchtopk"),
                                             ("skip_transcoder", "jumprelu")])
def test_resume_is_bitwise_identical(acts, tmp_path, kind, activation):
    x, y = acts["layers.1"], (acts["mlp.out"] if kind != "sae" else None)
    if kind != "sae":
        x = acts["mlp.in"]
    opts = dict(lr=3e-3, warmup_steps=3, grad_accum_steps=2, micro_batch_size=48,
                dead_feature_threshold=200)  # dead latents appear, so AuxK is exercised
    data = list(batches(x, 14, y=y))
    full = TrainStep(make(kind=kind, activation=activation), **opts)
    for xb, yb in data:
        m = full.step(xb, yb)
    assert m["step"] == 7

    first = TrainStep(make(kind=kind, activation=activation), **opts)
    for xb, yb in data[:5]:  # stop in the middle of an accumulation
        first.step(xb, yb)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = TrainStep(make(seed=99, kind=kind, activation=activation), **opts)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    for xb, yb in data[5:]:
        m2 = resumed.step(xb, yb)
    assert m2 == m
    for (name, a), b in zip(full.dictionary.state_dict().items(),
                            resumed.dictionary.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(full.tokens_since_fired, resumed.tokens_since_fired)


def test_matches_sparsify_trainer_step_for_step(acts):
    """Same init, same batches: sparsify 1.3.3's loop and ours give the same parameters."""
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    s = SparseCoder(64, SparseCoderConfig(num_latents=128, k=8))
    d = make()
    with torch.no_grad():
        d.W_enc.copy_(s.encoder.weight)
        d.W_dec.copy_(s.W_dec)
    ours = TrainStep(d, warmup_steps=3, total_steps=8)
    adam = torch.optim.Adam(s.parameters(), lr=2e-4 / (128 / 2**14) ** 0.5)
    sched = get_linear_schedule_with_warmup(adam, 3, 8)
    for i, (xb, _) in enumerate(batches(acts["layers.1"], 8)):
        m = ours.step(xb)
        if i == 0:
            s.b_dec.data = xb.mean(0)
        s.set_decoder_norm_to_unit_norm()
        out = s(xb)
        out.fvu.backward()
        s.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        sched.step()
        assert math.isclose(m["fvu"], float(out.fvu), rel_tol=1e-4)
    s.set_decoder_norm_to_unit_norm()
    assert torch.allclose(d.W_enc, s.encoder.weight, atol=1e-5)
    assert torch.allclose(d.W_dec, s.W_dec, atol=1e-5)
    assert torch.allclose(d.b_dec, s.b_dec, atol=1e-5)


def test_decoder_norms_stay_one_and_lr_follows_sparsify(acts):
    d = make(num_latents=256)
    step = TrainStep(d, warmup_steps=4)
    assert step.base_lr == pytest.approx(2e-4 / math.sqrt(256 / 2**14))
    lrs = [step.step(xb)["lr"] for xb, _ in batches(acts["layers.1"], 6)]
    assert lrs == pytest.approx([0, 0.25 * step.base_lr, 0.5 * step.base_lr,
                                 0.75 * step.base_lr, step.base_lr, step.base_lr])
    norms = d.decoder_norms()
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_auxk_trains_dead_latents(acts):
    d = make(num_latents=512, k=4)
    step = TrainStep(d, lr=3e-3, warmup_steps=1, dead_feature_threshold=300, auxk_alpha=1 / 32)
    ms = [step.step(xb) for xb, _ in batches(acts["layers.1"], 12)]
    assert ms[0]["auxk_loss"] == 0 and ms[-1]["auxk_loss"] > 0
    assert 0 < ms[-1]["dead_frac"] < 1
    # the AuxK loss alone sends gradient to dead latents only, which the TopK loss never reaches
    dead = step.dead_mask
    x = acts["layers.1"][:128]
    d.zero_grad()
    d(x, dead_mask=dead).auxk_loss.backward()
    touched = d.W_enc.grad.abs().sum(1) > 0
    assert touched.any() and not (touched & ~dead).any()
    assert (d.W_dec.grad.abs().sum(1) > 0)[~dead].sum() == 0


def test_micro_batches_equal_one_batch(acts):
    x = acts["layers.1"][:256]
    a, b = TrainStep(make(), lr=1e-3, warmup_steps=0), TrainStep(make(), lr=1e-3, warmup_steps=0,
                                                                 micro_batch_size=64)
    for _ in range(3):
        ma, mb = a.step(x), b.step(x)
    assert ma["fvu"] == pytest.approx(mb["fvu"], rel=1e-4)
    assert torch.allclose(a.dictionary.W_enc, b.dictionary.W_enc, atol=1e-6)


def test_bf16_autocast_runs_and_transcoder_needs_target(acts):
    step = TrainStep(make(), lr=1e-3, warmup_steps=0, autocast_dtype=torch.bfloat16)
    for xb, _ in batches(acts["layers.1"], 3):
        m = step.step(xb)
    assert math.isfinite(m["loss"]) and step.dictionary.W_enc.dtype == torch.float32
    with pytest.raises(BioLLMError, match="target"):
        TrainStep(make(kind="transcoder"), warmup_steps=0).step(acts["mlp.in"][:32])
