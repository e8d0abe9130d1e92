"""biollm_engine: the headless engine of the BioLLM Workbench (never imports Qt)."""

__version__ = "0.1.0"
