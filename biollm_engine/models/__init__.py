"""Models: loading, per-family layouts, hookpoints, capture and splicing."""

from .architectures import ARCHITECTURES, Architecture, bind_architecture, detect_architecture
from .hookpoints import (Hookpoint, capture, list_hookpoints, mlp_modules, resolve_hookpoint,
                         run_to, splice)
from .loading import LoadedModel, load_model

__all__ = ["ARCHITECTURES", "Architecture", "Hookpoint", "bind_architecture", "LoadedModel", "capture",
           "detect_architecture", "list_hookpoints", "load_model", "mlp_modules",
           "resolve_hookpoint", "run_to", "splice"]
