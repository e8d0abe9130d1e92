"""The embedded demo: a small cell-sentence model trained on scanpy's PBMC cells, with its
transcoders and SAE (`build`), and the whole pipeline run on it headless (`run`)."""

from .build import DEFAULT_WORKSPACE, DemoBuildConfig, build
from .run import DemoRunConfig, run

__all__ = ["DEFAULT_WORKSPACE", "DemoBuildConfig", "DemoRunConfig", "build", "run"]
