"""What the model-diffing view needs: a crosscoder and its inputs on some cells (a job, no Qt).

A crosscoder reads several sources at once: hookpoints of one model (`sources` like
'layers.1', 'layers.2'), or one hookpoint of two models ('base:layers.1', 'finetuned:layers.1'
with `cfg.models` naming each label's model). Each source is run over the same cells, one model
after the other, and the kept tokens are stacked into [tokens, sources, d].
"""

from __future__ import annotations

from pathlib import Path

from biollm_engine.errors import BioLLMError


def _model_path(name: str, dictionary_dir: Path) -> str:
    """A model named in a dictionary's config: relative paths are read beside the dictionary."""
    p = Path(name)
    if not p.is_absolute() and not p.exists() and (dictionary_dir / p).exists():
        return str(dictionary_dir / p)
    return name


def crosscoder_inputs(path: str | Path, data: str | Path, n_cells: int = 100,
                      batch_size: int = 8, progress=None, cancel=None):
    """(crosscoder, activations [tokens, sources, d]) over the first `n_cells` cells of `data`."""
    import torch
    from biollm_engine.dictionaries import load_dictionary
    from biollm_engine.harvest import live_batches
    from biollm_engine.inputs import open_data
    from biollm_engine.models import load_model
    from biollm_engine.progress import ProgressTracker
    from biollm_engine.training.pair import split_source

    dictionary = load_dictionary(path)
    cfg = dictionary.cfg
    if cfg.kind != "crosscoder" or cfg.n_sources < 2:
        raise BioLLMError(f"{Path(path).name} is a {cfg.kind}; model diffing needs a crosscoder "
                          "over two sources (two models, or two hookpoints of one model).")
    data_set = open_data(data)
    n = min(n_cells, len(data_set))
    models: dict[str | None, object] = {}
    tracker = ProgressTracker("model diffing", cfg.n_sources, progress, cancel)
    columns = []
    for source in cfg.sources:
        label, hookpoint = split_source(source)
        name = cfg.models.get(label) if label is not None else None
        name = name or cfg.model
        if not name:
            raise BioLLMError(f"the crosscoder does not name the model of source {source}; "
                              "retrain it with the model recorded (cfg.json 'model' / 'models').")
        name = _model_path(name, Path(path))
        if name not in models:
            models[name] = load_model(name, device="cpu")
        lm = models[name]
        examples = data_set.examples(lm.tokenizer, list(range(n)))
        parts = [b[hookpoint] for b in live_batches(lm, examples, [hookpoint], 4096, batch_size)]
        columns.append(torch.cat(parts) if parts else torch.empty(0, cfg.d_in))
        tracker.update()
    if len({len(c) for c in columns}) > 1:
        raise BioLLMError("the crosscoder's sources kept different numbers of tokens on the same "
                          "cells; its models need the same tokenizer.")
    return dictionary, torch.stack(columns, dim=1)
