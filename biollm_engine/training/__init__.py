"""Training sparse dictionaries: the loop, checkpoints, distributed plans, spliced evaluation.

`TrainConfig` imports without torch (the CLI parser and the GUI's form read it at start-up);
`train` loads the engine on first use.
"""

from .config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str):
    if name == "train":
        from .trainer import train

        return train
    raise AttributeError(name)
