"""biollm_engine: the headless engine of the BioLLM Workbench (never imports Qt)."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that importing the package (e.g. by the GUI at start-up) does not import torch
    if name == "load_dictionary":
        from .dictionaries import load_dictionary

        return load_dictionary
    raise AttributeError(f"module 'biollm_engine' has no attribute {name!r}")
