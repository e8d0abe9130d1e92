"""The Evaluate panel's state: a cell-type annotation evaluation of the workspace's model.

No Qt. `run_evaluation` is what the job runs; `EvaluateState` keeps the result and maps its cells
back to the data set's rows, so the views can mark wrong and changed cells on the embedding.
"""

from __future__ import annotations

import numpy as np
from psygnal import Signal

from biollm_engine.errors import BioLLMError


def run_evaluation(model: str, data: str, obs_key: str, cfg, dictionaries=(), top_k: int = 200,
                   progress=None, cancel=None):
    """Load the model, the cells and the dictionaries to splice, and evaluate."""
    from biollm_engine.dictionaries import load_dictionary
    from biollm_engine.evaluation import evaluate
    from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
    from biollm_engine.models import load_model

    if not model:
        raise BioLLMError("no model in the workspace; open a model folder first.")
    if not data:
        raise BioLLMError("no cells open; open an .h5ad with cell-type labels first.")
    dicts = [load_dictionary(d) for d in dictionaries]
    lm = load_model(model, device="cpu")
    ds = CellDataset(data, CellSentenceConfig(top_k=top_k))
    try:
        return evaluate(lm, ds, obs_key, cfg, [d.to(lm.device) for d in dicts],
                        progress=progress, cancel=cancel)
    finally:
        ds.close()


class EvaluateState:
    finished = Signal()

    def __init__(self) -> None:
        self.result = None
        self.summary: dict = {}
        self.rows = np.zeros(0, dtype=np.int64)
        """data-set row of each evaluated cell"""

    def set_result(self, result, obs_names) -> None:
        index = {str(n): i for i, n in enumerate(obs_names)}
        missing = [c for c in result.cell_ids if str(c) not in index]
        if missing:
            raise BioLLMError(f"{len(missing)} evaluated cells are not in the open data set "
                              f"(e.g. {missing[0]}); open the file that was evaluated.")
        self.result = result
        self.summary = result.to_dict()
        self.rows = np.array([index[str(c)] for c in result.cell_ids], dtype=np.int64)
        self.finished.emit()

    def wrong_cells(self) -> np.ndarray:
        return self.rows[~self.result.correct]

    def changed_cells(self) -> np.ndarray:
        changed = self.result.changed
        return self.rows[changed] if changed is not None else np.zeros(0, dtype=np.int64)

    def confusion(self) -> tuple[np.ndarray, list[str], list[str]]:
        c = self.summary["confusion"]
        return np.asarray(c["matrix"], dtype=np.float64), c["labels"], c["predicted"]

    def per_type_accuracy(self) -> tuple[list[str], np.ndarray]:
        per = self.summary["per_type"]
        return list(per), np.array([v["accuracy"] for v in per.values()], dtype=np.float64)

    def table(self):
        import pandas as pd

        if self.result is None:
            raise BioLLMError("no evaluation yet; run one first.")
        df = pd.DataFrame.from_records(self.result.rows())
        df.insert(1, "row", self.rows)
        return df

