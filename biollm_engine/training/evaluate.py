"""`evaluate(cfg)`: a trained dictionary measured on a model and a data set (`biollm eval`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BioLLMError


@dataclass(kw_only=True)
class EvalConfig:
    model: str = field(metadata={"help": "model name or folder"})
    model2: str | None = field(default=None, metadata={
        "help": "crosscoders across two models: the fine-tuned model (--model is the base)"})
    data: str = field(metadata={"help": "input file (cells .h5ad, DNA FASTA/GenBank, text)"})
    data_option: list[str] = field(default_factory=list, metadata={
        "help": "reader option KEY=VALUE, e.g. top_k=100 (as in biollm harvest)"})
    dict: str = field(metadata={"help": "dictionary folder (ours, sparsify, SAELens, Goodfire)"})
    hookpoint: str | None = field(default=None, metadata={
        "help": "hookpoint to splice at, for dictionary files that do not record theirs (an SAE)"})
    cells: int = field(default=64, metadata={"help": "records (cells, windows, lines) to "
                                                     "evaluate on"})
    seed: int = field(default=0, metadata={"help": "seed choosing the records"})
    max_length: int | None = field(default=None, metadata={"help": "at most this many tokens "
                                                                   "per record"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "model dtype"})

    def __post_init__(self):
        if self.cells <= 0:
            raise BioLLMError("--cells must be positive.")


def check_widths(lm, dictionary) -> None:
    """The dictionary must fit the model's hookpoints it reads and writes."""
    from ..dictionaries import check_fits
    from ..models import resolve_hookpoint
    from .pair import split_source
    from .splice_eval import reads, writes

    def width(name: str) -> int:
        # a two-model crosscoder's 'base:HP' and 'finetuned:HP' are both HP in `lm`
        return resolve_hookpoint(lm, split_source(name)[1]).width

    for source, target in zip(reads(dictionary.cfg), writes(dictionary.cfg)):
        check_fits(dictionary, width(source), width(target))


def evaluate(cfg: EvalConfig) -> dict:
    """FVU, L0, dead fraction, CE clean/spliced/zeroed, loss recovered, cell-type agreement."""
    from ..commands.harvest import parse_data_options
    from ..dictionaries import load_dictionary
    from ..inputs import open_data
    from ..models import load_model
    from .splice_eval import EvalSet, evaluate_dictionary

    dictionary = load_dictionary(cfg.dict)
    if cfg.hookpoint:
        if dictionary.cfg.target in ("", dictionary.cfg.hookpoint):  # an SAE writes where it reads
            dictionary.cfg.target = cfg.hookpoint
        dictionary.cfg.hookpoint = cfg.hookpoint
    if not dictionary.cfg.hookpoint:
        raise BioLLMError(f"dictionary {cfg.dict} does not record its hookpoint; give --hookpoint.")
    data = open_data(cfg.data, **parse_data_options(cfg.data_option))
    two = bool(dictionary.cfg.models)
    if two and cfg.model2 is None:
        raise BioLLMError(f"{cfg.dict} is a crosscoder across two models "
                          f"({', '.join(f'{k}: {v}' for k, v in dictionary.cfg.models.items())}); "
                          "give --model BASE and --model2 FINETUNED.")
    if not two and cfg.model2 is not None:
        raise BioLLMError(f"--model2 is for crosscoders across two models; {cfg.dict} reads one.")
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check_widths(lm, dictionary)
    dictionary = dictionary.to(lm.device)
    evalset = EvalSet.held_out(lm, data, cfg.cells, cfg.seed, cfg.max_length)
    if two:
        from .pair import LABELS, check_pair, evaluate_pair

        lm2 = load_model(cfg.model2, device=cfg.device, dtype=cfg.dtype)
        check_pair(lm, lm2, dictionary.cfg.hookpoint)
        result = evaluate_pair(dict(zip(LABELS, (lm, lm2))), dictionary, evalset)
    else:
        result = evaluate_dictionary(lm, dictionary, evalset)
    if dictionary.cfg.n_sources == 2:
        from .pair import decoder_norm_shares

        result["decoder_norms"] = decoder_norm_shares(dictionary)
    return {"dictionary": cfg.dict, "hookpoint": dictionary.cfg.hookpoint,
            "kind": dictionary.cfg.kind, **result}
