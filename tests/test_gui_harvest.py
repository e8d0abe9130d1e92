"""The workbench's harvest job on DNA: the window, stride and strands the dialog offers reach the
reader, and the cache records them (features from that cache then need the same options)."""

import numpy as np

from biollm_engine.cache import ActivationCache
from biollm_engine.inputs.dna import window_spans
from workbench.state.harvest import HarvestJob, run_harvest


def test_dna_harvest_job_reads_windows_with_stride_on_both_strands(tiny_model_dirs, tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "x.fa").write_text(">r\n" + "".join(rng.choice(list("ACGT"), 500)) + "\n")
    job = HarvestJob(model=str(tiny_model_dirs("gpt_neox")), data=str(tmp_path / "x.fa"),
                     out=str(tmp_path / "cache"), hookpoints=["layers.1"], window=100, stride=50,
                     reverse_complement=True, device="cpu")
    cache = ActivationCache(run_harvest(job))
    assert cache.meta["data_options"] == {"window": 100, "stride": 50,
                                          "reverse_complement": True}
    # windows of 100 bases every 50 (nine cover the 500), each read on both strands
    assert len(window_spans(500, 100, 50)) == 9
    assert len(np.unique(np.asarray(cache.sources()["record"]))) == 2 * 9
