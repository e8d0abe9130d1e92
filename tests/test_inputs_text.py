"""Text inputs (.txt, .jsonl, saved datasets) and `open_data`'s format detection and errors."""

import gzip
import json

import numpy as np
import pytest

from biollm_engine.errors import BioLLMError
from biollm_engine.inputs import TextConfig, TextDataset, data_kind, open_data

LINES = ["CD3E CD3D IL7R are T cell genes.", "MS4A1 and CD79A mark B cells ünïcode.",
         "NKG7 GNLY GZMB: NK cells"]


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_models import build_tokenizer  # the BPE tokenizer every tiny test model saves

    return build_tokenizer()


def test_txt_lines_and_paragraphs(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text(f"{LINES[0]}\n\n{LINES[1]}\r\n{LINES[2]}\n\n\n", encoding="utf-8")
    ds = open_data(path)
    assert isinstance(ds, TextDataset) and ds.units is None and ds.kind == "text"
    assert len(ds) == 3 and ds.describe() == "3 lines from notes.txt"
    assert [t for _, t in ds.texts()] == LINES
    assert [i for i, _ in ds.texts([2, 0])] == [2, 0]
    paragraphs = open_data(path, paragraphs=True)
    assert [t for _, t in paragraphs.texts()] == [LINES[0], f"{LINES[1]}\n{LINES[2]}"]
    examples = list(ds.examples(tokenizer, indices=[1, 2]))
    assert [e.record for e in examples] == [1, 2]
    for ex in examples:
        assert tokenizer.decode(ex.input_ids) == ex.text == LINES[ex.record]
        assert ex.keep.all() and np.all(ex.unit == -1) and ex.input_ids.dtype == np.int64
    assert len(next(ds.examples(tokenizer, max_length=4))) == 4
    with pytest.raises(BioLLMError, match="genes_only.*text has none"):
        next(ds.examples(tokenizer, genes_only=True))


def test_jsonl_text_field(tmp_path, tokenizer):
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t, "body": t.upper()}) + "\n"
                            for i, t in enumerate(LINES)) + "\n", encoding="utf-8")
    ds = open_data(path)
    assert [t for _, t in ds.texts()] == LINES
    assert "JSON lines" in ds.describe()
    assert [t for _, t in open_data(path, text_field="body").texts()] == [t.upper() for t in LINES]
    ex = next(ds.examples(tokenizer, indices=[1]))
    assert tokenizer.decode(ex.input_ids) == LINES[1]


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "broken"\n')
    with pytest.raises(BioLLMError, match="line 3 is not valid JSON"):
        open_data(path)
    path.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(BioLLMError, match="line 2 has no string field 'text'"):
        open_data(path)
    path.write_text('{"text": "fine"}\n[1, 2]\n')
    with pytest.raises(BioLLMError, match="line 2"):
        open_data(path)
    (tmp_path / "latin.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(BioLLMError, match="line 2 is not UTF-8"):
        open_data(tmp_path / "latin.txt")
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"one\ntwo\n"))
    with pytest.raises(BioLLMError, match="gzip-compressed; decompress it"):
        open_data(tmp_path / "notes.txt.gz")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(BioLLMError, match="no text"):
        open_data(tmp_path / "blank.txt")


def test_saved_dataset(tmp_path, tokenizer):
    import datasets

    ds = datasets.Dataset.from_dict({"text": LINES, "label": [0, 1, 2]})
    ds.save_to_disk(str(tmp_path / "single"))
    single = open_data(tmp_path / "single")
    assert data_kind(tmp_path / "single") == "text"
    assert [t for _, t in single.texts()] == LINES and len(single) == 3
    assert tokenizer.decode(next(single.examples(tokenizer)).input_ids) == LINES[0]
    splits = datasets.DatasetDict({"train": ds, "test": ds.select([2])})
    splits.save_to_disk(str(tmp_path / "splits"))
    assert [t for _, t in open_data(tmp_path / "splits").texts()] == LINES
    test = open_data(tmp_path / "splits", split="test")
    assert [t for _, t in test.texts()] == [LINES[2]] and "split test" in test.describe()
    with pytest.raises(BioLLMError, match="no column 'sentence'.*text_field"):
        open_data(tmp_path / "single", text_field="sentence")
    with pytest.raises(BioLLMError, match="choose a split.*train, test"):
        open_data(tmp_path / "splits", split="validation")


def test_open_data_detects_formats_and_rejects_bad_files(tmp_path, pbmc_h5ad):
    (tmp_path / "reads").write_text(">r1\nACGT\n")
    (tmp_path / "records").write_text('{"text": "x"}\n')
    (tmp_path / "matrix").write_bytes(pbmc_h5ad.read_bytes())
    assert [data_kind(tmp_path / n) for n in ("reads", "records", "matrix")] == \
        ["dna", "text", "cells"]
    assert open_data(tmp_path / "matrix", top_k=10).sentence(0)[:3] == \
        open_data(pbmc_h5ad).sentence(0)[:3]
    assert TextDataset(tmp_path / "records", TextConfig()).format == "txt"
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BioLLMError, match="unknown data format; supported: .h5ad"):
        open_data(tmp_path / "table.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BioLLMError, match="folder but not a saved dataset"):
        open_data(tmp_path / "folder")
    with pytest.raises(BioLLMError, match="does not exist"):
        open_data(tmp_path / "nothing.txt")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(BioLLMError, match="empty"):
        open_data(tmp_path / "empty.jsonl")
    with pytest.raises(BioLLMError, match="does not apply to text.*text_field"):
        open_data(tmp_path / "records", top_k=5)
    with pytest.raises(BioLLMError, match="out of range"):
        list(open_data(tmp_path / "records").texts([3]))
