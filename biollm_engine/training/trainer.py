"""`train(cfg)`: the training loop over one or several dictionaries at once.

Per step: one batch for every hookpoint (from the activation cache or live from the model, in
one pass), one `TrainStep` per dictionary, metrics through the progress callback, and at the
chosen intervals a metrics line, a spliced evaluation and a checkpoint. Cancelling saves a
checkpoint, then raises `Cancelled`; `--resume` continues from it exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as cfgmod
from ..errors import BioLLMError
from ..fileio import atomic_path, write_json
from ..progress import Cancelled, CancelToken, ProgressCallback, ProgressTracker
from . import checkpoint
from .config import TrainConfig
from .distributed import World, average_gradients, gather_rows, init_world, shutdown
from .pair import decoder_norm_shares, evaluate_pair, pair_batches, split_source
from .splice_eval import EvalSet, evaluate_dictionary, reads, stack_inputs, writes
from .streams import CacheStream, LiveStream

# what a resumed run must share with the run that wrote the checkpoint
_SAME_ON_RESUME = ("model", "model2", "data", "data_option", "cache", "cache2", "hookpoint", "target", "kind",
                   "activation", "latents", "expansion_factor", "k", "batch_size", "seed",
                   "distribute", "genes_only", "max_length", "shuffle_tokens", "eval_cells")
_REPORTED = ("loss", "fvu", "l0", "dead_frac")


@dataclass
class Unit:
    """One dictionary being trained, under the name of its output folder, and its optimiser."""

    name: str
    dictionary: torch.nn.Module
    step: object

    @property
    def hookpoints(self) -> list[str]:
        return list(dict.fromkeys(reads(self.dictionary.cfg) + writes(self.dictionary.cfg)))

    def batch(self, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) for `TrainStep.step`: y is the target of a transcoder, else None."""
        dcfg = self.dictionary.cfg
        acts = {h: batch[h].to(device, torch.float32) for h in self.hookpoints}
        y = None if dcfg.kind in ("sae", "crosscoder") else acts[writes(dcfg)[0]]
        return stack_inputs(dcfg, acts), y


def train(cfg: TrainConfig, progress: ProgressCallback | None = None,
          cancel: CancelToken | None = None) -> dict[str, Path]:
    """Train the dictionaries `cfg` describes; return {name: folder} of those this rank wrote."""
    world = init_world(cfg.distribute, cfg.device)
    try:
        return _Run(cfg, world).run(progress, cancel)
    finally:
        shutdown(world)


class _Run:
    def __init__(self, cfg: TrainConfig, world: World):
        from ..models.loading import resolve_device

        self.cfg = cfg
        self.world = world
        self.out = Path(cfg.out)
        self.device = world.device(resolve_device(cfg.device))
        self.lm = None
        self.lm2 = None
        self.source = None
        self.cache = None
        self.model_id = cfg.model
        self.model2_id = cfg.model2
        self.total = math.ceil(cfg.tokens / cfg.batch_size)

    # --- setup ---------------------------------------------------------------------------
    def _model(self):
        from ..models import load_model

        if self.lm is None:
            if not self.model_id:
                raise BioLLMError("this cache does not record its model; give --model.")
            self.lm = load_model(self.model_id, device=str(self.device), dtype=self.cfg.dtype)
        return self.lm

    def _models(self) -> dict:
        """Crosscoders across two models: {'base': model, 'finetuned': model}, checked to
        tokenize alike and to have one width at the hookpoint."""
        from ..models import load_model
        from .pair import LABELS, check_pair

        if self.lm2 is None:
            if not self.model2_id:
                raise BioLLMError("the fine-tuned model's cache does not record its model; give "
                                  "--model2.")
            lm2 = load_model(self.model2_id, device=str(self.device), dtype=self.cfg.dtype)
            check_pair(self._model(), lm2, self.cfg.hookpoint[0])
            self.lm2 = lm2
        return dict(zip(LABELS, (self._model(), self.lm2)))

    def _data(self):
        """The data set: --data, or for the evaluation of a cache run the one it came from."""
        from ..commands.harvest import parse_data_options
        from ..inputs import open_data

        if self.source is None:
            if self.cfg.data:
                self.source = open_data(self.cfg.data, **parse_data_options(self.cfg.data_option))
            else:
                meta = self.cache.meta
                self.source = open_data(meta["data"], **meta.get("data_options", {}))
        return self.source

    def _widths(self) -> dict[str, int]:
        cfg = self.cfg
        if cfg.kind == "crosscoder":
            names = cfg.sources()
        else:
            names = list(dict.fromkeys(cfg.hookpoint + cfg.targets()))
        if cfg.cache is not None and cfg.two_models:
            from .pair import LABELS, PairedCache

            self.cache = PairedCache(cfg.cache, cfg.cache2)
            missing = [h for h in names if h not in self.cache.widths]
            if missing:
                raise BioLLMError(f"hookpoint {missing[0]!r} is not in both caches {cfg.cache} "
                                  f"and {cfg.cache2}.")
            self.model_id = cfg.model or self.cache.model(LABELS[0])
            self.model2_id = cfg.model2 or self.cache.model(LABELS[1])
            return {h: self.cache.widths[h] for h in names}
        if cfg.cache is not None:
            from ..cache import ActivationCache

            self.cache = ActivationCache(cfg.cache)
            self.cache.check_hookpoints(names)
            self.model_id = cfg.model or self.cache.meta.get("model")
            return {h: self.cache.widths[h] for h in names}
        from ..models import resolve_hookpoint

        self._data()  # a missing data file fails before the model loads
        if cfg.two_models:
            lms = self._models()
            return {h: resolve_hookpoint(lms[label], hp).width
                    for h, (label, hp) in ((h, split_source(h)) for h in names)}
        lm = self._model()
        return {h: resolve_hookpoint(lm, h).width for h in names}

    def _units(self) -> list[Unit]:
        from ..dictionaries import Dictionary, DictionaryConfig
        from .step import TrainStep

        cfg, widths = self.cfg, self._widths()
        autocast = torch.bfloat16 if self.device.type == "cuda" else None
        # (output folder, hookpoints read, hookpoint written) of each dictionary
        if cfg.two_models:
            plans = [(f"{cfg.hookpoint[0]}.base_vs_finetuned", cfg.sources(), "")]
        elif cfg.kind == "crosscoder":
            plans = [("+".join(cfg.hookpoint), list(cfg.hookpoint), "")]
        else:
            plans = [(h, [h], t) for h, t in zip(cfg.hookpoint, cfg.targets())]
        units = []
        for i, (name, inputs, target) in self.world.owns(list(enumerate(plans))):
            if len({widths[h] for h in inputs}) > 1:
                raise BioLLMError(f"crosscoder sources must have one width; got "
                                  f"{ {h: widths[h] for h in inputs} }.")
            d_in = widths[inputs[0]]
            dcfg = DictionaryConfig(
                kind=cfg.kind, activation=cfg.activation, d_in=d_in,
                d_out=widths[target] if target else d_in,
                num_latents=cfg.latents or cfg.expansion_factor * d_in, k=cfg.k,
                hookpoint=split_source(inputs[0])[1], target=target,
                sources=inputs if cfg.kind == "crosscoder" else [],
                model=self.model_id or "", models=self._source_models())
            torch.manual_seed(cfg.seed + i)  # the same weights whichever rank builds it
            d = Dictionary(dcfg).to(self.device)
            step = TrainStep(d, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                             auxk_alpha=cfg.auxk_alpha,
                             dead_feature_threshold=cfg.dead_feature_threshold,
                             grad_accum_steps=cfg.grad_accum_steps,
                             micro_batch_size=cfg.micro_batch_size, autocast_dtype=autocast,
                             total_steps=math.ceil(self.total / cfg.grad_accum_steps))
            if self.world.active and self.world.mode == "data":
                params = list(d.parameters())
                step.optimizer.register_step_pre_hook(
                    lambda *_, params=params: average_gradients(params, self.world))
            units.append(Unit(name.replace("/", "_"), d, step))
        return units

    def _source_models(self) -> dict[str, str]:
        from .pair import LABELS

        if not self.cfg.two_models:
            return {}
        return {LABELS[0]: self.model_id or "", LABELS[1]: self.model2_id or ""}

    def _stream(self, hookpoints: list[str], eval_records: list[int]):
        cfg, world = self.cfg, self.world
        if cfg.cache is not None:
            return CacheStream(self.cache, hookpoints, cfg.batch_size, cfg.seed, world)
        from ..harvest import live_batches

        lm, data = self._model(), self._data()
        held = set(eval_records)
        records = [r for r in range(len(data)) if r not in held]

        def read(recs):
            examples = data.examples(lm.tokenizer, indices=recs, genes_only=cfg.genes_only,
                                     max_length=cfg.max_length)
            if cfg.two_models:
                return pair_batches(self._models(), list(examples), cfg.hookpoint[0],
                                    cfg.batch_size)
            return live_batches(lm, examples, hookpoints, cfg.batch_size)

        return LiveStream(read, records, hookpoints, cfg.batch_size, cfg.shuffle_tokens,
                          chunk_records=16, seed=cfg.seed, world=world)

    def _eval_set(self) -> EvalSet | None:
        cfg = self.cfg
        # training from a cache: evaluate on the data set it was harvested from, if still there
        data_path = cfg.data or self.cache.meta.get("data")
        if cfg.eval_cells <= 0 or not data_path or not Path(data_path).exists() \
                or not self.model_id:
            return None
        if cfg.two_models:
            self._models()  # both models must be there to evaluate
        lm, data = self._model(), self._data()
        return EvalSet.held_out(lm, data, cfg.eval_cells, cfg.seed, cfg.max_length)

    # --- the loop ------------------------------------------------------------------------
    def run(self, progress, cancel) -> dict[str, Path]:
        cfg, world = self.cfg, self.world
        last = checkpoint.latest(self.out)
        if cfg.resume and last is None:
            raise BioLLMError(f"--resume: {self.out} holds no checkpoint to resume from; start "
                              "without --resume.")
        if not cfg.resume and last is not None:
            raise BioLLMError(f"{self.out} holds an unfinished run's checkpoint; add --resume to "
                              "continue it, or choose another --out.")
        units = self._units()
        hookpoints = list(dict.fromkeys(h for u in units for h in u.hookpoints))
        evalset = self._eval_set() if world.is_main or world.mode == "hookpoints" else None
        stream = self._stream(hookpoints, evalset.records if evalset else [])
        total = self.total
        state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "world_size": world.size,
                 "distribute": cfg.distribute, "config": cfgmod.to_dict(cfg), "eval": {}}
        if last is not None:
            state = self._restore(last, units, stream)
        elif world.is_main:
            write_json(self.out / "cfg.json", cfgmod.to_dict(cfg))
        owned = {u.name: u.step for u in units}
        tracker = ProgressTracker("train", total, progress, cancel or CancelToken(),
                                  start_step=state["step"])
        tracker.tokens = state["tokens"]
        t0 = time.perf_counter() - state["elapsed_s"]
        metrics: dict[str, dict] = {}

        def save_checkpoint():
            state["elapsed_s"] = time.perf_counter() - t0
            stream_state = {"stream": stream.state(), "torch_rng": torch.get_rng_state()}
            return checkpoint.save(self.out, state, owned, stream_state, world)

        try:
            while state["step"] < total:
                batch, n = stream.next()
                if world.active and not all(u.step.initialized for u in units):
                    self._initialize_globally(units, batch)
                for u in units:
                    x, y = u.batch(batch, self.device)
                    metrics[u.name] = u.step.step(x, y)
                state["step"] += 1
                state["tokens"] += n
                step = state["step"]
                if cfg.log_every and (step % cfg.log_every == 0 or step == total):
                    self._log(step, state["tokens"], metrics)
                if evalset is not None and cfg.eval_every and step % cfg.eval_every == 0 \
                        and step < total:
                    state["eval"] = self._evaluate(units, evalset)
                    self._log(step, state["tokens"], {}, eval=state["eval"])
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    save_checkpoint()
                stopping = world.all_agree(tracker.cancel.cancelled)
                if stopping:
                    tracker.cancel.cancel()
                tracker.update(tokens=state["tokens"] - tracker.tokens, **_mean(metrics))
        except Cancelled:
            save_checkpoint()
            raise
        if evalset is not None:
            state["eval"] = self._evaluate(units, evalset)
        state["elapsed_s"] = time.perf_counter() - t0
        paths = self._save_final(units, state, metrics)
        world.barrier()
        if world.is_main:
            checkpoint.clear(self.out)
        return paths

    def _initialize_globally(self, units: list[Unit], batch: dict) -> None:
        """TrainStep sets its biases from its first batch; under data parallelism give it the
        global batch, so that every rank starts where a single process would."""
        full = gather_rows(batch, self.world)
        for u in units:
            u.step.initialize(*u.batch(full, self.device))

    def _restore(self, last: Path, units: list[Unit], stream) -> dict:
        state = checkpoint.read_state(last)
        saved = state["config"]
        now = cfgmod.to_dict(self.cfg)
        changed = [k for k in _SAME_ON_RESUME if saved.get(k) != now.get(k)]
        if changed:
            raise BioLLMError(f"--resume with different options than the checkpoint in {self.out}"
                              f" ({', '.join('--' + k.replace('_', '-') for k in changed)}); "
                              "resume with the same options.")
        if state["world_size"] != self.world.size:
            raise BioLLMError(f"the checkpoint was written by {state['world_size']} processes; "
                              "resume with the same torchrun --nproc_per_node.")
        owned = {u.name: u.step for u in units}
        saved_stream = checkpoint.restore(last, owned, self.world)
        stream.restore(saved_stream["stream"])
        torch.set_rng_state(saved_stream["torch_rng"])
        state["config"] = now
        if self.world.is_main:
            self._truncate_log(state["step"])
        return state

    def _evaluate(self, units: list[Unit], evalset: EvalSet) -> dict:
        if self.cfg.two_models:
            return {u.name: evaluate_pair(self._models(), u.dictionary, evalset) for u in units}
        return {u.name: evaluate_dictionary(self._model(), u.dictionary, evalset) for u in units}

    def _save_final(self, units: list[Unit], state: dict, metrics: dict) -> dict[str, Path]:
        if not (self.world.is_main or self.world.mode == "hookpoints"):
            return {}
        paths = {}
        for u in units:
            u.dictionary.cfg.training = {
                "tokens": state["tokens"], "steps": state["step"],
                "wall_time_s": round(state["elapsed_s"], 3),
                **{k: metrics.get(u.name, {}).get(k) for k in _REPORTED},
                "eval": state["eval"].get(u.name, {}),
                **({"decoder_norms": decoder_norm_shares(u.dictionary)}
                   if u.dictionary.cfg.n_sources == 2 else {}),
                "config": cfgmod.to_dict(self.cfg),
            }
            paths[u.name] = u.dictionary.save(self.out / u.name)
        return paths

    # --- metrics.jsonl -------------------------------------------------------------------
    def _log(self, step: int, tokens: int, metrics: dict, **extra) -> None:
        if not (self.world.is_main or self.world.mode == "hookpoints"):
            return
        line = {"step": step, "tokens": tokens, **metrics, **extra}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line, default=float) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop the lines a killed run logged after its checkpoint (and a half-written last)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for ln in path.read_text().splitlines():
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        with atomic_path(path) as tmp:
            tmp.write_text("".join(keep))


def _mean(metrics: dict[str, dict]) -> dict[str, float]:
    """Progress metrics: each reported metric averaged over the dictionaries."""
    out = {}
    for k in _REPORTED:
        vals = [m[k] for m in metrics.values() if m.get(k) is not None]
        if vals:
            out[k] = float(sum(vals) / len(vals))
    return out
