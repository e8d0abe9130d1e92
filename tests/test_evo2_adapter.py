"""The Evo 2 adapter on a pure-torch stand-in with StripedHyena's module names, shapes and block
outputs (hyena blocks: pre_norm, projections, filter, out_filter_dense, post_norm, mlp l1/l2/l3;
attention blocks: inner_mha_cls with out_proj), through the engine's own hookpoint, capture,
harvest and dictionary code. The real package needs a CUDA GPU and downloaded weights."""

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from biollm_engine.cli import main
from biollm_engine.errors import BioLLMError

D, VOCAB = 32, 512
SEQ = ("ATGAACAATCTTGCCTTTTTATTTCCTGGACAAGGGTCTCAATTTGTAGGAATGGGCAAACAATTTTGGAATGATTTTGTGCTC"
       "GCAAAGAGATTGTTTGAAGAAGCGAGCGATGCGATC")  # B. velezensis bmyD start (pyhmmer test data)


class RMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(D))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class ParallelGatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(D, 64, False), nn.Linear(D, 64, False), \
            nn.Linear(64, D, False)

    def forward(self, z):
        return self.l3(F.gelu(self.l1(z)) * self.l2(z))


class HyenaCascade(nn.Module):
    """Short causal depthwise convolution over the 3 projections, then x2 * x1 * v gating."""

    def __init__(self):
        super().__init__()
        self.short_filter_weight = nn.Parameter(torch.randn(3 * D, 1, 3) * 0.3)

    def forward(self, u, inference_params=None, padding_mask=None):
        z = F.conv1d(F.pad(u.transpose(1, 2), (2, 0)), self.short_filter_weight, groups=3 * D)
        x2, x1, v = z.transpose(1, 2).split(D, dim=-1)
        return x2 * x1 * v, inference_params


class ParallelGatedConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre_norm, self.post_norm = RMSNorm(), RMSNorm()
        self.filter = HyenaCascade()
        self.projections = nn.Linear(D, 3 * D)
        self.out_filter_dense = nn.Linear(D, D)
        self.mlp = ParallelGatedMLP()

    def forward(self, u, inference_params=None, padding_mask=None):
        z, inference_params = self.filter(self.projections(self.pre_norm(u)))
        z_in = self.out_filter_dense(z) + u
        return self.mlp(self.post_norm(z_in)) + z_in, inference_params


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.Wqkv, self.out_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x, inference_params=None):
        q, k, v = self.Wqkv(x).view(*x.shape[:2], 3, 4, D // 4).unbind(2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        return self.out_proj(o.transpose(1, 2).reshape(x.shape))


class AttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre_norm, self.post_norm = RMSNorm(), RMSNorm()
        self.inner_mha_cls = MHA()
        self.mlp = ParallelGatedMLP()

    def forward(self, u, inference_params=None, padding_mask=None):
        u = self.inner_mha_cls(self.pre_norm(u), inference_params=inference_params) + u
        return self.mlp(self.post_norm(u)) + u, None


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class StripedHyena(nn.Module):
    """hcs, hcm, mha, hcl: Evo 2's stripes, four blocks deep, with its tied unembedding."""

    def __init__(self):
        super().__init__()
        self.embedding_layer = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList([ParallelGatedConvBlock(), ParallelGatedConvBlock(),
                                     AttentionBlock(), ParallelGatedConvBlock()])
        self.norm = RMSNorm()
        self.unembed = Lambda(lambda u: u @ self.embedding_layer.weight.T)

    def forward(self, x, inference_params_dict=None, padding_mask=None):
        x = self.embedding_layer(x)
        for block in self.blocks:
            x, _ = block(x, inference_params=None, padding_mask=padding_mask)
        return self.unembed(self.norm(x)), inference_params_dict


@pytest.fixture(scope="module")
def lm():
    from biollm_engine.models.evo2 import wrap_striped_hyena

    torch.manual_seed(0)
    return wrap_striped_hyena(StripedHyena(), "evo2:stand-in", "cpu", "float32")


def test_hookpoints_resolve_to_evo2_module_paths(lm):
    from biollm_engine.models import list_hookpoints, resolve_hookpoint

    assert (lm.num_layers, lm.d_model, lm.arch.name) == (4, D, "evo2")
    paths = {h.name: (h.module_path, h.io) for h in list_hookpoints(lm)}
    assert paths["embed"] == ("model.blocks.0", "input")
    assert paths["layers.1"] == ("model.blocks.1", "output")
    assert paths["layers.1.attn.out"] == ("model.blocks.1.out_filter_dense", "output")
    assert paths["layers.2.attn.out"] == ("model.blocks.2.inner_mha_cls", "output")
    assert paths["layers.3.mlp.in"] == ("model.blocks.3.mlp", "input")
    assert paths["layers.3.mlp.out"] == ("model.blocks.3.mlp", "output")
    with pytest.raises(BioLLMError, match="layers.0..layers.3"):
        resolve_hookpoint(lm, "layers.4")


def test_logit_lens_reads_the_tied_unembedding_and_norm_scale(lm):
    from biollm_engine.analysis.logit_lens import unembedding

    body = lm.model.model
    with torch.no_grad():
        body.norm.scale.copy_(torch.linspace(0.5, 1.5, D))
    W_U, g = unembedding(lm)
    torch.testing.assert_close(W_U, body.embedding_layer.weight)
    torch.testing.assert_close(g, body.norm.scale.detach())
    h = torch.randn(3, D)
    torch.testing.assert_close(body.unembed(h), h @ W_U.T)


def test_captured_activations_decompose_the_residual_stream(lm):
    from biollm_engine.models import capture, list_hookpoints, run_to

    ids = torch.tensor([list(SEQ.encode())])
    names = [h.name for h in list_hookpoints(lm)]
    with capture(lm, names, stop=False) as acts:
        logits = run_to(lm, ids)
    assert logits.shape == (1, len(SEQ), VOCAB)
    torch.testing.assert_close(acts["embed"], lm.model.model.embedding_layer(ids))
    prev = acts["embed"]
    for i in range(lm.num_layers):
        # residual after block i = before + mixer contribution + MLP contribution
        added = acts[f"layers.{i}.attn.out"] + acts[f"layers.{i}.mlp.out"]
        torch.testing.assert_close(acts[f"layers.{i}"], prev + added)
        torch.testing.assert_close(lm.model.model.blocks[i].mlp(acts[f"layers.{i}.mlp.in"]),
                                   acts[f"layers.{i}.mlp.out"])
        prev = acts[f"layers.{i}"]
    # stopping early gives the same activation as the full forward
    with capture(lm, ["layers.1"]) as early:
        assert run_to(lm, ids) is None
    torch.testing.assert_close(early["layers.1"], acts["layers.1"])


def test_harvest_and_goodfire_sae_through_the_adapter(lm, tmp_path):
    from biollm_engine.analysis.encode import encode_cache, encode_live
    from biollm_engine.dictionaries.formats import load_dictionary
    from biollm_engine.harvest import HarvestConfig, harvest
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset

    fasta = tmp_path / "bmyD.fa"
    fasta.write_text(f">bmyD\n{SEQ}\n")
    data = DnaDataset(fasta, DnaConfig(window=40, stride=30, reverse_complement=True))
    cache = harvest(lm, data.examples(), HarvestConfig(hookpoints=["layers.2", "layers.1.mlp.out"],
                                                       batch_size=3, store_dtype="float32"),
                    tmp_path / "cache")
    src = cache.sources()
    table = data.windows_table()
    assert cache.num_tokens == int((table.end - table.start).sum())
    # byte tokens as CharLevelTokenizer makes them, each at its forward-strand base
    fwd = np.asarray(src["record"]) % 2 == 0
    assert bytes(np.asarray(src["token_id"])[fwd][:40].astype(np.uint8)).decode() == SEQ[:40]
    np.testing.assert_array_equal(np.asarray(src["unit"])[fwd][:40], np.arange(40))
    # Goodfire's Evo 2 SAE layout (tied W [d, latents], b_enc, b_dec), named for its layer
    torch.manual_seed(2)
    sae = tmp_path / "sae-layer2-k4.pt"
    torch.save({"W": torch.randn(D, 64) * 0.2, "b_enc": torch.zeros(64), "b_dec": torch.zeros(D)},
               sae)
    d = load_dictionary(sae)
    assert (d.cfg.hookpoint, d.cfg.k) == ("layers.2", 4)
    # an uncalibrated BatchTopK picks per batch; a fixed inference threshold makes live and
    # cached encodings (batched differently) comparable token by token
    d.threshold.fill_(1.0)
    live = list(encode_live(lm, data.examples(), d, batch_size=3))
    cached = list(encode_cache(cache, d, chunk_tokens=10_000))
    a = np.vstack([c.acts.toarray() for c in live])
    b = np.vstack([c.acts.toarray() for c in cached])
    assert a.shape == (cache.num_tokens, 64) and (a > 0).any()
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_real_evo2_missing_is_one_clear_error(tmp_path, capsys):
    import importlib.util

    from biollm_engine.models import load_model

    # whichever is missing here (the package, a GPU, or the weights, never downloaded in tests)
    # is named with what to do
    if importlib.util.find_spec("evo2") is None:
        missing = r"evo2 package, which is not installed: pip install 'biollm-workbench\[evo2\]'"
    elif not torch.cuda.is_available():
        missing = "runs only on a CUDA GPU"
    else:
        missing = r"not in the Hugging Face cache .*huggingface-cli download arcinstitute/evo2_7b"
    with pytest.raises(BioLLMError, match=missing):
        load_model("evo2:evo2_7b")
    fasta = tmp_path / "x.fa"
    fasta.write_text(f">x\n{SEQ}\n")
    sae = tmp_path / "sae.pt"
    torch.save({"W": torch.zeros(D, 128), "b_enc": torch.zeros(128), "b_dec": torch.zeros(D)}, sae)
    assert main(["tracks", "--model", "evo2:evo2_7b", "--data", str(fasta), "--dict", str(sae),
                 "--features", "0", "--hookpoint", "layers.2", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert re.search(missing, err) and len(err.strip().splitlines()) == 1


def test_importing_vortex_leaves_no_log_file_and_the_root_logger_as_it_was(tmp_path,
                                                                            monkeypatch):
    # vortex.logging, on import, creates activations_debug.log in the current folder and sets
    # the root logger to print every library's INFO messages; our import leaves neither
    import importlib
    import importlib.util
    import logging
    import sys

    from biollm_engine.models.evo2 import _vortex_import

    if importlib.util.find_spec("vortex") is None:
        pytest.skip("vortex (the evo2 package's model code) is not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "vortex.logging", raising=False)
    root = logging.getLogger()
    handlers, level, file_handler = root.handlers[:], root.level, logging.FileHandler
    with _vortex_import():
        vortex_logging = importlib.import_module("vortex.logging")
    vortex_logging.activations_logger.error("an error vortex logs")
    assert not (tmp_path / "activations_debug.log").exists()
    assert root.handlers == handlers and root.level == level
    assert logging.FileHandler is file_handler


@pytest.fixture
def evo2_package(monkeypatch):
    """The evo2 package's two names the loader imports, standing in where it cannot be
    installed (it builds CUDA code): `Evo2(name, local_path)` raises what the test sets."""
    import sys
    import types

    raised = {}

    class Evo2:
        def __init__(self, name, local_path=None):
            raise raised["error"]

    pkg, utils = types.ModuleType("evo2"), types.ModuleType("evo2.utils")
    pkg.Evo2, utils.MODEL_NAMES = Evo2, ["evo2_7b", "evo2_1b_base"]
    pkg.utils = utils
    monkeypatch.setitem(sys.modules, "evo2", pkg)
    monkeypatch.setitem(sys.modules, "evo2.utils", utils)
    return raised


def _hub_error():
    error = type("LocalEntryNotFoundError", (OSError,), {"__module__": "huggingface_hub.errors"})
    return error("Cannot find the requested files in the disk cache and outgoing traffic has "
                 "been disabled. To enable hf.co look-ups and downloads online, set 'local_files")


@pytest.mark.parametrize("spec, cuda, error, message", [
    ("evo2_40b", True, None, "unknown Evo 2 model 'evo2_40b'; use one of evo2_7b, evo2_1b_base"),
    ("evo2_7b", False, None, "runs only on a CUDA GPU and none is available here"),
    ("evo2_1b_base", True, None, "needs NVIDIA Transformer Engine"),
    ("evo2_7b", True, _hub_error(), "not in the Hugging Face cache and could not be downloaded "
     r"\(LocalEntryNotFoundError\); download the weights \(huggingface-cli download "
     "arcinstitute/evo2_7b\\) and give the .pt as evo2:evo2_7b:<path>"),
    ("evo2_7b:/x/evo2_7b.pt", True, RuntimeError("PytorchStreamReader failed reading zip archive"
                                                 "\nfailed finding central directory"),
     r"could not load Evo 2 evo2_7b \(PytorchStreamReader failed reading zip archive\)"),
])
def test_each_missing_piece_of_evo2_is_named_in_one_line(evo2_package, monkeypatch, spec, cuda,
                                                         error, message):
    import sys

    from biollm_engine.models.evo2 import load_evo2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # an import of it fails
    evo2_package["error"] = error or AssertionError("the loader should have stopped before")
    with pytest.raises(BioLLMError, match=message) as e:
        load_evo2(spec)
    assert "\n" not in str(e.value)
