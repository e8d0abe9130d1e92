"""Tiny models of every supported architecture, saved the way a user's model folder is.

Random weights (2-4 layers, width 64-128) from each architecture's config, with a real byte-level
BPE tokenizer trained with the `tokenizers` library, written with `save_pretrained`, so tests load
them through exactly the public code path a downloaded model takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHS = ("gpt_neox", "gemma2", "llama", "gpt2", "bert")
CAUSAL_ARCHS = ("gpt_neox", "gemma2", "llama", "gpt2")

_CORPUS = [
    "The following is a list of 200 gene names ordered by descending expression level in a "
    "Homo sapiens cell. Your task is to give the cell type which this cell belongs to based on "
    "its gene expression.\nCell sentence: CD3E CD3D IL7R MALAT1 RPL13 RPS27 LTB CCR7.\n"
    "The cell type corresponding to these genes is: CD4+ T cell.",
    "MS4A1 CD79A CD79B HLA-DRA CD74 B cell NKG7 GNLY GZMB NK cell CD14 LYZ S100A8 S100A9 "
    "FCGR3A monocyte dendritic cell FCER1A CST3 PPBP megakaryocyte CD8A CD8B CD34 progenitor",
    "ACGTACGTTATAAAGGCCAATTGCGCGATATCGATCGNNACGT",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>", "[CLS]", "[SEP]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(arch: str, vocab_size: int, layers: int = 2):
    import transformers as tf

    common = dict(vocab_size=vocab_size, num_hidden_layers=layers)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=64, num_attention_heads=4, intermediate_size=256,
                                max_position_embeddings=512, rotary_pct=0.25,
                                use_parallel_residual=True, **common)
    if arch == "gemma2":
        return tf.Gemma2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                               head_dim=16, intermediate_size=128, max_position_embeddings=512,
                               sliding_window=64, **common)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=128, max_position_embeddings=512, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_head=4, n_layer=layers, n_positions=512, bos_token_id=0, eos_token_id=0,
                             vocab_size=vocab_size)
    if arch == "bert":
        return tf.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                             max_position_embeddings=512, **common)
    raise ValueError(arch)


def make_tiny_model(arch: str, path: str | Path, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random model of `arch` with its tokenizer to `path` and return the path."""
    import transformers as tf

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    cfg = tiny_config(arch, len(tokenizer), layers)
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.bos_token_id = tokenizer.bos_token_id
    cfg.eos_token_id = tokenizer.eos_token_id
    cls = tf.AutoModel if arch == "bert" else tf.AutoModelForCausalLM
    model = cls.from_config(cfg)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
