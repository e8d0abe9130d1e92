"""The demo model's word-level tokenizer: one token per gene symbol and per cell-type name.

A word-level vocabulary keeps the interpretability story simple: every gene in a cell sentence
is one token (so a feature firing on a token fires on a gene), and the answer's first token is
the whole cell type (so "the predicted cell type" is one next-token distribution).
"""

from __future__ import annotations

from typing import Iterable

from ..errors import BioLLMError

UNK, PAD, EOS = "<unk>", "<pad>", "<eos>"

# Split on whitespace only, so that gene symbols such as HLA-DRA or RP11-782C8.1 stay whole;
# then peel sentence punctuation off the end of a word ("expression." and "CD3E." at the end
# of the cell sentence, "is:").
_TRAILING_PUNCT = r"[.:,;?!]$"


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(_TRAILING_PUNCT), behavior="isolated"),
    ])


def build_tokenizer(genes: Iterable[str], labels: Iterable[str], texts: Iterable[str] = ()):
    """A `PreTrainedTokenizerFast` whose vocabulary holds every gene, every label and every word
    of `texts` (the prompts), each as one token.

    Labels may contain spaces and punctuation ("CD4+/CD25 T Reg"); they are added tokens, which
    the tokenizer matches before splitting words.
    """
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    genes, labels = list(genes), [str(x) for x in labels]
    if not genes or not labels:
        raise BioLLMError("the demo tokenizer needs at least one gene and one cell-type label.")
    pre = _pre_tokenizer()
    vocab: dict[str, int] = {}
    for word in [UNK, PAD, EOS, *labels, *genes]:
        vocab.setdefault(word, len(vocab))
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    split_genes = [g for g in genes if len(pre.pre_tokenize_str(g)) != 1]
    if split_genes:
        raise BioLLMError(f"gene symbols {split_genes[:5]} would not be one token; rename them.")

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.add_tokens([AddedToken(label, single_word=False, normalized=False) for label in labels])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD,
                                   eos_token=EOS, bos_token=EOS)


def label_token_ids(tokenizer, labels: Iterable[str]) -> list[int]:
    """The token id of each label, checking that each label is exactly one token."""
    ids = []
    for label in labels:
        enc = tokenizer(" " + str(label), add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or enc[0] == tokenizer.unk_token_id:
            raise BioLLMError(f"cell type {label!r} is not one token of this tokenizer; "
                              "rebuild the demo with `biollm demo build`.")
        ids.append(enc[0])
    return ids
