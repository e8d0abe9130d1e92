"""Cell-type annotation evaluation, CellVerse-style: C2S generation or multiple choice, with
and without dictionaries spliced in (`biollm evaluate`)."""

from .config import EvaluateConfig
from .evaluate import EvaluationResult, evaluate
from .labels import UNMATCHED, match_label, normalize

__all__ = ["UNMATCHED", "EvaluateConfig", "EvaluationResult", "evaluate", "match_label",
           "normalize"]
