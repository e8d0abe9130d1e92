"""One hookpoint naming scheme across architectures, activation capture and splicing.

Names: `embed` (the residual stream entering block 0, embedding scale and positions included),
`layers.{i}` (the residual stream after block i), `layers.{i}.attn.out` and `layers.{i}.mlp.out`
(what attention and the MLP add to the residual stream), `layers.{i}.mlp.in` (the MLP's input,
after its norm).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..errors import BioLLMError
from .loading import LoadedModel

_SUFFIXES = ("attn.out", "mlp.in", "mlp.out")


@dataclass(frozen=True)
class Hookpoint:
    name: str
    module: object
    module_path: str
    io: str
    """"input": the module's first input; "output": its output (first element of a tuple)."""
    layer: int
    """Block index, -1 for `embed`."""
    width: int


def _make(lm: LoadedModel, name: str, layer: int, path: str, io: str) -> Hookpoint:
    return Hookpoint(name, lm.module(path), path, io, layer, lm.d_model)


def _block_hookpoint(lm: LoadedModel, layer: int, suffix: str) -> Hookpoint:
    arch = lm.arch
    block = f"{arch.layers}.{layer}"
    name = f"layers.{layer}" + (f".{suffix}" if suffix else "")
    if suffix == "":
        return _make(lm, name, layer, block, "output")
    if suffix == "attn.out":
        # block types can alternate (Evo 2: hyena and attention blocks mix differently)
        for path in (arch.attn_out, *arch.alternates.get("attn_out", ())):
            try:
                lm.module(f"{block}.{path}")
                return _make(lm, name, layer, f"{block}.{path}", "output")
            except AttributeError:
                continue
        return _make(lm, name, layer, f"{block}.{arch.attn_out}", "output")
    if suffix == "mlp.in":
        return _make(lm, name, layer, f"{block}.{arch.mlp[0]}", "input")
    return _make(lm, name, layer, f"{block}.{arch.mlp[-1]}", "output")


def list_hookpoints(lm: LoadedModel) -> list[Hookpoint]:
    """Every hookpoint of the model, in forward order."""
    out = [_make(lm, "embed", -1, f"{lm.arch.layers}.0", "input")]
    for i in range(lm.num_layers):
        out += [_block_hookpoint(lm, i, s) for s in ("attn.out", "mlp.in", "mlp.out", "")]
    return out


def valid_names_summary(lm: LoadedModel) -> str:
    last = lm.num_layers - 1
    return ", ".join(["embed", f"layers.0..layers.{last}"]
                     + [f"layers.0.{s}..layers.{last}.{s}" for s in _SUFFIXES])


def resolve_hookpoint(lm: LoadedModel, name: str | Hookpoint) -> Hookpoint:
    if isinstance(name, Hookpoint):
        return name
    if name == "embed":
        return _make(lm, "embed", -1, f"{lm.arch.layers}.0", "input")
    m = re.fullmatch(r"layers\.(\d+)(?:\.(attn\.out|mlp\.in|mlp\.out))?", str(name).strip())
    if m and int(m.group(1)) < lm.num_layers:
        return _block_hookpoint(lm, int(m.group(1)), m.group(2) or "")
    raise BioLLMError(f"hookpoint {name!r} does not exist in {lm.name}; valid names: "
                      f"{valid_names_summary(lm)}.")


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured."""


def _first(x):
    if isinstance(x, (tuple, list)):
        return x[0]
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    return x


@contextlib.contextmanager
def capture(lm: LoadedModel, hookpoints: Iterable[str | Hookpoint],
            stop: bool = True) -> Iterator[dict]:
    """Record the activations at `hookpoints` into the yielded dict (name -> tensor [B, T, d]).

    With `stop`, the forward pass ends as soon as all of them are recorded, so run it through
    `run_to`, which swallows that early exit.
    """
    hps = [resolve_hookpoint(lm, h) for h in hookpoints]
    wanted = {h.name for h in hps}
    store: dict = {}
    handles = []

    def record(name: str, value) -> None:
        store[name] = value
        if stop and len(store) == len(wanted) and wanted.issubset(store):
            raise _StopForward

    for hp in hps:
        if hp.io == "output":
            def hook(_m, _args, output, name=hp.name):
                record(name, _first(output))
            handles.append(hp.module.register_forward_hook(hook))
        else:
            def pre_hook(_m, args, kwargs, name=hp.name):
                record(name, args[0] if args else kwargs["hidden_states"])
            handles.append(hp.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def run_to(lm: LoadedModel, input_ids, attention_mask=None):
    """Run the transformer body on a batch; returns its output, or None when a `capture` stopped it.

    The body (no unembedding) is enough for every hookpoint, so logits are never computed here.
    """
    try:
        return lm.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        return None


@contextlib.contextmanager
def splice(lm: LoadedModel, hookpoint: str | Hookpoint, fn: Callable) -> Iterator[Hookpoint]:
    """Replace the activation at `hookpoint` by `fn(activation)` for every forward in the block.

    Splices run before any other hook on the module, so a `capture` at the same hookpoint
    records the replaced activation.
    """
    hp = resolve_hookpoint(lm, hookpoint)
    if hp.io == "output":
        def hook(_m, _args, output):
            if isinstance(output, tuple):
                return (fn(output[0]),) + output[1:]
            return fn(output)
        handle = hp.module.register_forward_hook(hook, prepend=True)
    else:
        def pre_hook(_m, args, kwargs):
            if args:
                return (fn(args[0]),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        handle = hp.module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
    try:
        yield hp
    finally:
        handle.remove()


def mlp_modules(lm: LoadedModel, layer: int) -> list:
    """The modules that, called in order on `layers.{layer}.mlp.in`, give `layers.{layer}.mlp.out`."""
    return [lm.module(f"{lm.arch.layers}.{layer}.{p}") for p in lm.arch.mlp]
