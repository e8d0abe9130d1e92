"""Annotation enrichment past its exact budget: values counted in float32-ordered bins, memory
no longer growing, AUROCs within a bin's ties of the exact ones and means unchanged."""

import numpy as np
import pytest

from biollm_engine.analysis.dna_enrichment import BaseStats, value_bin


def stream(stats, values, masks, block=997):
    for a in range(0, values.shape[1], block):
        stats.update(0, a, values[:, a:a + block], masks[:, a:a + block])


def test_binned_enrichment_matches_the_exact_one_and_stops_growing():
    rng = np.random.default_rng(0)
    n = 60_000
    masks = np.stack([rng.random(n) < 0.3, (np.arange(n) // 500) % 4 == 0])
    fire = rng.random((3, n)) < [[0.2], [0.05], [0.5]]
    fire[1] |= masks[1] & (rng.random(n) < 0.6)  # feature 1 fires mostly inside type b
    values = (rng.lognormal(0, 1.5, (3, n)) * fire).astype(np.float32)
    values[1, masks[1]] *= 4
    values[2, masks[0] & fire[2]] = 0.25  # many ties inside type 0
    exact, binned = BaseStats([0, 1, 2], ["a", "b"]), BaseStats([0, 1, 2], ["a", "b"],
                                                                exact_bases=5_000)
    stream(exact, values, masks)
    stream(binned, values, masks)
    assert exact.binned is None and binned.binned is not None
    assert binned.kept == 0 and not any(binned._vals)
    e, b = exact.enrichment(), binned.enrichment()
    np.testing.assert_allclose(b["auroc"], e["auroc"], atol=2e-3)
    for col in ("mean_inside", "mean_outside", "bases_inside"):
        np.testing.assert_array_equal(b[col], e[col])
    assert e["auroc"][3] > 0.6  # feature 1, type b: found in both
    assert abs(b["auroc"][3] - e["auroc"][3]) < 2e-3


def test_value_bins_keep_the_order_of_floats():
    v = np.array([-3.0, -1e-3, 0.0, 1e-30, 1e-3, 0.5, 0.5039, 2.0, 1e30], np.float32)
    b = value_bin(v)
    assert np.all(np.diff(b) >= 0) and b[0] < b[1] < b[2] and b[-2] < b[-1]
    assert value_bin(np.float32([0.5]))[0] == value_bin(np.float32([0.5019]))[0]


@pytest.mark.parametrize("budget", [0, 10**9])
def test_a_feature_only_inside_has_auroc_1(budget):
    masks = np.zeros((1, 1000), bool)
    masks[0, 100:200] = True
    values = np.where(masks, 2.0, 0.0).astype(np.float32)
    s = BaseStats([7], ["motif"], exact_bases=budget)
    stream(s, values, masks, block=64)
    assert s.enrichment()["auroc"][0] == 1.0
