"""The embedded demo: a small cell-sentence model trained on scanpy's PBMC cells, with its
transcoders and SAE (`build`), and the whole pipeline run on it headless (`run`)."""

from .build import DemoBuildConfig, build
from .run import DemoRunConfig, run
from .workspace import DEFAULT_WORKSPACE

__all__ = ["DEFAULT_WORKSPACE", "DemoBuildConfig", "DemoRunConfig", "build", "run"]
