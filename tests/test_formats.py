"""Dictionary files: our format round-trips bitwise; sparsify, SAELens and Goodfire files load
and encode by their own formulas; bad files are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from biollm_engine import load_dictionary
from biollm_engine.dictionaries import Dictionary, DictionaryConfig, check_fits, save_sparsify
from biollm_engine.errors import BioLLMError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomized(d: Dictionary, seed: int = 0) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if d.cfg.activation == "jumprelu":
            d.threshold.abs_()
    return d


@pytest.mark.parametrize("kind,activation", [
    ("sae", "topk"), ("sae", "batchtopk"), ("sae", "jumprelu"), ("sae", "relu"),
    ("transcoder", "topk"), ("skip_transcoder", "jumprelu"), ("crosscoder", "topk")])
def test_our_format_round_trips_bitwise(tmp_path, kind, activation):
    kw = dict(kind=kind, activation=activation, d_in=16, num_latents=48, k=4,
              hookpoint="layers.1", model="tiny", training={"tokens": 123})
    if kind == "crosscoder":
        kw["sources"] = ["base:layers.1", "c2s:layers.1"]
    if kind != "sae" and kind != "crosscoder":
        kw.update(d_out=12, target="layers.1.mlp.out")
    d = randomized(Dictionary(DictionaryConfig(**kw)))
    if activation == "batchtopk":
        d.threshold.fill_(0.25)
    d.save(tmp_path / "dict")
    assert sorted(p.name for p in (tmp_path / "dict").iterdir()) == ["cfg.json",
                                                                     "dictionary.safetensors"]
    e = load_dictionary(tmp_path / "dict")
    assert e.cfg == d.cfg
    assert not e.training
    assert d.state_dict().keys() == e.state_dict().keys()
    for name, t in d.state_dict().items():
        assert torch.equal(t, e.state_dict()[name]), name
    x = torch.randn(20, 2, 16) if kind == "crosscoder" else torch.randn(20, 16)
    d.eval()
    assert torch.equal(d.encode(x), e.encode(x))


def sparsify_coder(kind: str, d_in=16, latents=48, k=4, seed=0):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    cfg = SparseCoderConfig(num_latents=latents, k=k, transcode=kind != "sae",
                            skip_connection=kind == "skip_transcoder")
    s = SparseCoder(d_in, cfg)
    with torch.no_grad():
        s.W_dec.normal_(std=0.3)
        s.b_dec.normal_()
        s.encoder.bias.normal_(std=0.2)
        if s.W_skip is not None:
            s.W_skip.normal_(std=0.1)
    return s


def sorted_sparse(vals, idx):
    vals, order = vals.sort(dim=-1, descending=True)
    return vals, idx.gather(-1, order)


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_sparsify_folder_loads_and_encodes_identically(tmp_path, kind):
    s = sparsify_coder(kind)
    s.save_to_disk(tmp_path / "run" / "layers.2.mlp")  # sparsify nests one folder per hookpoint
    d = load_dictionary(tmp_path / "run")
    c = d.cfg
    assert (c.kind, c.hookpoint, c.k, c.num_latents) == (kind, "layers.2.mlp", 4, 48)
    x = torch.randn(64, 16)
    theirs = s.encode(x)
    vals, idx = d.encode_sparse(x)
    t_vals, t_idx = sorted_sparse(theirs.top_acts, theirs.top_indices)
    assert torch.equal(idx, t_idx)
    assert torch.equal(vals, t_vals)
    with torch.no_grad():
        assert torch.allclose(d(x, x).out, s(x, x).sae_out, atol=1e-5)
    # and back: our export is read by sparsify's own loader
    save_sparsify(d, tmp_path / "export")
    from sparsify import SparseCoder

    s2 = SparseCoder.load_from_disk(tmp_path / "export")
    for a, b in zip(s.state_dict().values(), s2.state_dict().values()):
        assert torch.equal(a, b)


def test_nested_folder_with_several_hookpoints_needs_a_choice(tmp_path):
    for i, hp in enumerate(["layers.1", "layers.3"]):
        sparsify_coder("sae", seed=i).save_to_disk(tmp_path / "run" / hp)
    with pytest.raises(BioLLMError, match="layers.1, layers.3"):
        load_dictionary(tmp_path / "run")
    assert load_dictionary(tmp_path / "run", hookpoint="layers.3").cfg.hookpoint == "layers.3"
    with pytest.raises(BioLLMError, match="no dictionary for hookpoint"):
        load_dictionary(tmp_path / "run", hookpoint="layers.9")


def write_saelens(folder, arch: str, d_in=16, d_sae=40, seed=0, **cfg_extra):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
         "b_enc": torch.randn(d_sae, generator=g) * 0.1,
         "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
         "b_dec": torch.randn(d_in, generator=g)}
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.3
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "hook_name":
           "blocks.3.hook_resid_post", "model_name": "pythia-70m", "apply_b_dec_to_input": True,
           "normalize_activations": "none", **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_folder_encodes_by_its_formula(tmp_path, arch):
    extra = {"activation_fn": "topk", "activation_fn_kwargs": {"k": 5}} if arch == "topk" else {}
    w = write_saelens(tmp_path / "sl", arch, **extra)
    d = load_dictionary(tmp_path / "sl")
    assert d.cfg.hookpoint == "blocks.3.hook_resid_post" and d.cfg.model == "pythia-70m"
    x = torch.randn(30, 16)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        expect = pre.relu()
    elif arch == "jumprelu":
        expect = pre * (pre > w["threshold"])
    else:
        top = pre.topk(5, dim=1)
        expect = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    z = d.encode(x)
    assert torch.allclose(z, expect, atol=1e-5)
    assert torch.allclose(d.decode(z), expect @ w["W_dec"] + w["b_dec"], atol=1e-4)


def test_goodfire_state_dict_loads_as_tied_batchtopk(tmp_path):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=g) * 0.2
    state = {"W": W, "b_enc": torch.randn(64, generator=g) * 0.1,
             "b_dec": torch.randn(16, generator=g)}
    path = tmp_path / "sae-layer26-mixed-expansion_4-k_3.pt"
    torch.save(state, path)
    d = load_dictionary(path)
    assert (d.cfg.activation, d.cfg.k, d.cfg.hookpoint) == ("batchtopk", 3, "layers.26")
    x = torch.randn(2, 10, 16)
    # Goodfire's notebook: f = relu(x @ W + b_enc); keep the top k·(tokens) over the whole batch
    f = (x @ W + state["b_enc"]).relu().flatten()
    top = f.topk(3 * 20)
    expect = torch.zeros_like(f).scatter(0, top.indices, top.values).reshape(2, 10, 64)
    z = d.encode(x)
    assert torch.allclose(z, expect, atol=1e-5)
    assert int((z > 0).sum()) == 60
    assert torch.allclose(d.decode(z), expect @ W.T + state["b_dec"], atol=1e-4)


def one_line_error(fn, match: str):
    with pytest.raises(BioLLMError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_files_give_one_line_errors(tmp_path):
    one_line_error(lambda: load_dictionary(tmp_path / "missing"), "does not exist")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    one_line_error(lambda: load_dictionary(tmp_path / "other"), "sae.safetensors")
    d = randomized(Dictionary(DictionaryConfig(d_in=8, num_latents=16, k=2)))
    d.save(tmp_path / "ok")
    # corrupt weights: truncated file
    weights = tmp_path / "ok" / "dictionary.safetensors"
    data = weights.read_bytes()
    d.save(tmp_path / "bad")
    (tmp_path / "bad" / "dictionary.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_dictionary(tmp_path / "bad"), "not a readable safetensors")
    # shapes that disagree with the config
    d.save(tmp_path / "shape")
    cfg = json.loads((tmp_path / "shape" / "cfg.json").read_text())
    cfg["num_latents"] = 17
    (tmp_path / "shape" / "cfg.json").write_text(json.dumps(cfg))
    one_line_error(lambda: load_dictionary(tmp_path / "shape"), "config says")
    (tmp_path / "shape" / "cfg.json").write_text("{not json")
    one_line_error(lambda: load_dictionary(tmp_path / "shape"), "not valid JSON")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "x.pt")
    one_line_error(lambda: load_dictionary(tmp_path / "x.pt"), "expected tensors W, b_enc, b_dec")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    one_line_error(lambda: load_dictionary(tmp_path / "junk.pt"), "could not be read")
    one_line_error(lambda: check_fits(d, 12), "width 8 but the hookpoint has width 12")
    check_fits(d, 8)
    relu = Dictionary(DictionaryConfig(d_in=8, num_latents=16, activation="relu"))
    one_line_error(lambda: save_sparsify(relu, tmp_path / "sp"), "TopK")
    assert (tmp_path / "ok" / "dictionary.safetensors").read_bytes() == data  # inputs untouched
