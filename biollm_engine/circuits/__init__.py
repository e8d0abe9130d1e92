"""Transcoder circuits: attribution graphs from input genes through features to the prediction.

`attribute` builds a `Graph` (plain data) on the `ReplacementModel`; `prune` selects what matters
for the target; `aggregate` merges graphs of many cells; `feature_to_feature_weights` is the
input-invariant view; `intervene` / `ablation_check` edit features and re-run; `export` writes
circuit-tracer JSON and CSV.
"""

import importlib

# Exports resolve on first use so that `biollm --help` and the CLI's option parsing (which read
# `pipeline.CircuitConfig`) do not import torch.
_EXPORTS = {
    "AggregateGraph": "aggregate", "aggregate": "aggregate",
    "attribute": "attribution", "label_token": "attribution",
    "Graph": "graph",
    "Edit": "interventions", "InterventionResult": "interventions",
    "ablation_check": "interventions", "intervene": "interventions",
    "PrunedGraph": "prune", "prune": "prune",
    "ReplacementModel": "replacement",
    "feature_to_feature_weights": "weights", "top_connections": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
