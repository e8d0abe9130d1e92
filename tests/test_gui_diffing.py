"""Model diffing view: a constructed crosscoder whose features belong to one model or both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biollm_engine.dictionaries import Dictionary, DictionaryConfig
from biollm_engine.errors import BioLLMError


@pytest.fixture
def crosscoder():
    torch.manual_seed(0)
    d = Dictionary(DictionaryConfig(kind="crosscoder", d_in=16, num_latents=12, k=4,
                                    sources=["base:layers.1", "c2s:layers.1"]))
    with torch.no_grad():
        w = d.W_dec.view(12, 2, 16)
        w[:4, 1] = 0.0  # base only
        w[4:8, 0] = 0.0  # cell-sentence model only
    return d


def test_scatter_shows_relative_norms_and_frequency_and_clicks(qtbot, crosscoder):
    from workbench.views.diffing import DiffingView

    view = DiffingView()
    qtbot.addWidget(view)
    x = torch.randn(500, 2, 16)
    view.set_crosscoder(crosscoder, x)
    df = view.table
    np.testing.assert_allclose(df["relative_norm"][:4], 0.0, atol=1e-6)
    np.testing.assert_allclose(df["relative_norm"][4:8], 1.0, atol=1e-6)
    assert ((df["relative_norm"][8:] > 0.2) & (df["relative_norm"][8:] < 0.8)).all()
    fired = (crosscoder.encode(x) > 0).float().mean(0).numpy()
    np.testing.assert_allclose(df["frequency"], fired)
    pts = view.points.points()
    assert len(pts) == 12
    xs = np.array([p.pos().x() for p in pts])
    np.testing.assert_allclose(xs, df["relative_norm"], rtol=1e-6)
    assert set(df["group"][:4]) == {"base:layers.1 only"}
    view.points.sigClicked.emit(view.points, [pts[5]], None)
    assert view.clicked == 5
    assert "feature 5" in view.detail.text() and "c2s:layers.1 only" in view.detail.text()


def test_a_dictionary_that_is_not_a_crosscoder_is_one_line(qtbot):
    from workbench.views.diffing import DiffingView

    view = DiffingView()
    qtbot.addWidget(view)
    sae = Dictionary(DictionaryConfig(kind="sae", d_in=16, num_latents=12, k=4))
    with pytest.raises(BioLLMError, match="crosscoder over two sources"):
        view.set_crosscoder(sae, torch.randn(10, 16))
