"""Transcoder circuits: attribution graphs from input genes through features to the prediction.

`attribute` builds a `Graph` (plain data) on the `ReplacementModel`; `prune` selects what matters
for the target; `aggregate` merges graphs of many cells; `feature_to_feature_weights` is the
input-invariant view; `intervene` / `ablation_check` edit features and re-run; `export` writes
circuit-tracer JSON and CSV.
"""

from .aggregate import AggregateGraph, aggregate
from .attribution import attribute, label_token
from .graph import Graph
from .interventions import Edit, InterventionResult, ablation_check, intervene
from .prune import PrunedGraph, prune
from .replacement import ReplacementModel
from .weights import feature_to_feature_weights, top_connections

__all__ = ["AggregateGraph", "Edit", "Graph", "InterventionResult", "PrunedGraph",
           "ReplacementModel", "ablation_check", "aggregate", "attribute",
           "feature_to_feature_weights", "intervene", "label_token", "prune", "top_connections"]
