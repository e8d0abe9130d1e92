"""What the DNA demo's SAE features track: every feature against every annotation type on the
held-out loci, then tracks, logos and a figure for the best feature of each type.

Writes into `out_dir` (default docs/figures): `dna_enrichment.csv` (per annotation type the best
features by AUROC, beside the AUROC of the bases' own letters as a baseline),
`dna_enrichment_all.csv` (every feature x type), `dna_probe.json` (a linear probe for the
reading frame in the SAE's layer, against the letters alone), `dna_tracks/` (`biollm tracks` on
the held-out loci for the chosen features: bedGraphs, logos, features.csv, top_windows.csv,
enrichment.csv)
and `dna_tracks.png` / `.svg` (one held-out window: genes and the chosen features' tracks, and a
zoom to single bases at a gene start).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_dir, atomic_path, read_json, write_json
from ..progress import CancelToken, ProgressCallback
from .dna import DEFAULT_DNA_DEMO
from .dna_data import TYPES, base_labels, load_records

FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures"
START_CODONS, STOP_CODONS = ("ATG", "GTG", "TTG"), ("TAA", "TAG", "TGA")
# what the letters alone say: a base inside a possible start / stop codon (either strand), a G or
# C (codon position 3 is GC-rich in this genome)
BASELINES = {"start codon": "in ATG/GTG/TTG", "stop codon": "in TAA/TAG/TGA",
             "codon 3 +": "G or C", "codon 3 -": "G or C", "CDS": "G or C"}


def demo_paths(demo_dir: str | Path = DEFAULT_DNA_DEMO) -> dict:
    demo_dir = Path(demo_dir)
    report = read_json(demo_dir / "dna_demo.json", "DNA demo report")
    return {"model": demo_dir / "model", "sae": demo_dir / report["sae"]["path"],
            "heldout": demo_dir / "heldout.fa", "sequences": demo_dir / "sequences.fa.gz",
            "annotations": demo_dir / "annotations.bed", "report": report,
            "window": int(report["config"]["context"])}


def letter_tracks(seq: str) -> dict[str, np.ndarray]:
    """float32 [len(seq)] per baseline: 1 on bases the letters alone would call."""
    from ..inputs.dna import reverse_complement

    def in_codons(codons):
        hit = np.zeros(len(seq), np.float32)
        for c in {*codons, *(reverse_complement(x) for x in codons)}:
            start = 0
            while (i := seq.find(c, start)) >= 0:
                hit[i:i + 3] = 1
                start = i + 1
        return hit

    gc = np.isin(np.frombuffer(seq.encode(), np.uint8), [ord("G"), ord("C")]).astype(np.float32)
    return {"in ATG/GTG/TTG": in_codons(START_CODONS), "in TAA/TAG/TGA": in_codons(STOP_CODONS),
            "G or C": gc}


def auroc(values: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each column of `values` [N, F] for the bases in `positive` [N] against the rest
    (ties at their mid-rank; NaN when either side is empty)."""
    from scipy.stats import rankdata

    n_in = int(positive.sum())
    n_out = len(positive) - n_in
    if not n_in or not n_out:
        return np.full(values.shape[1], np.nan)
    ranks = rankdata(values, axis=0)
    return (ranks[positive].sum(axis=0) - n_in * (n_in + 1) / 2) / (n_in * n_out)


def within_letter_auroc(values: np.ndarray, positive: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """AUROC computed among bases of the same letter, averaged over A, C, G, T weighted by their
    positives: what a feature knows about the annotation beyond the base it sits on."""
    total, weight = np.zeros(values.shape[1]), 0
    for b in b"ACGT":
        m = seq == b
        k = int(positive[m].sum())
        if 0 < k < int(m.sum()):
            total += auroc(values[m], positive[m]) * k
            weight += k
    return total / weight if weight else np.full(values.shape[1], np.nan)


def feature_enrichment(demo_dir: str | Path = DEFAULT_DNA_DEMO,
                       progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every SAE feature (and every letter baseline) against every annotation type on the
    held-out loci: (features x types, baselines x types), with AUROC, AUROC within letters,
    means inside and outside and firing frequency. The held-out loci are 30 kb, so their
    per-base values of all features are held in memory (61 MB for 512 features)."""
    from ..analysis.encode import encode_live
    from ..analysis.tracks import base_tracks
    from ..dictionaries.formats import load_dictionary
    from ..inputs.dna import DnaConfig, DnaDataset
    from ..models import load_model

    p = demo_paths(demo_dir)
    lm = load_model(str(p["model"]), device="cpu")
    sae = load_dictionary(p["sae"])
    data = DnaDataset(p["heldout"], DnaConfig(window=p["window"], stride=p["window"] // 2,
                                              tokenizer="byte"))
    by_name = {r.name: r for r in load_records()}
    names = list(data.records["name"])
    chunks = encode_live(lm, data.examples(), sae, sae.cfg.hookpoint, batch_size=16,
                         progress=progress, cancel=cancel, total=len(data))
    tracks = base_tracks(chunks, range(sae.num_latents), list(data.records["length"]),
                         windows=data.windows_table())
    values = np.concatenate([tracks[i].T for i in range(len(names))])  # [bases, features]
    labels = np.concatenate([base_labels(by_name[n]) for n in names], axis=1)
    seq = np.frombuffer("".join(by_name[n].seq for n in names).encode(), np.uint8)
    letters = {k: np.concatenate([letter_tracks(by_name[n].seq)[k] for n in names])
               for k in sorted(set(BASELINES.values()))}
    base_values = np.stack(list(letters.values()), axis=1)
    frequency = (values > 0).mean(axis=0)

    def table(vals, ids, key):
        rows = []
        for t, pos in zip(TYPES, labels):
            a, w = auroc(vals, pos), within_letter_auroc(vals, pos, seq)
            inside, outside = vals[pos].mean(axis=0), vals[~pos].mean(axis=0)
            rows.append(pd.DataFrame({key: ids, "annotation": t, "auroc": a,
                                      "auroc_within_letter": w, "mean_inside": inside,
                                      "mean_outside": outside, "bases_inside": int(pos.sum())}))
        return pd.concat(rows, ignore_index=True)

    features = table(values, np.arange(sae.num_latents), "feature")
    features["frequency"] = np.tile(frequency, len(TYPES))
    return features, table(base_values, list(letters), "baseline")


def frame_probe(demo_dir: str | Path = DEFAULT_DNA_DEMO, min_context: int = 32,
                probe_bases: int = 20_000, seed: int = 0) -> dict:
    """Is the reading frame in the SAE's layer at all? A logistic-regression probe for the codon
    position (1, 2, 3) of bases in + strand CDS, trained on the training windows and scored on
    the held-out loci, against the same probe on the one-hot letters of the base and the six
    before it (all the causal model could read locally). Bases with fewer than `min_context`
    bases before them in their window are left out."""
    from sklearn.linear_model import LogisticRegression

    from ..harvest import kept_activations
    from ..inputs.dna import DnaConfig, DnaDataset
    from ..models import load_model

    p = demo_paths(demo_dir)
    lm = load_model(str(p["model"]), device="cpu")
    hookpoint = p["report"]["sae"]["path"].rsplit("/", 1)[-1]
    data = DnaDataset(p["sequences"], DnaConfig(window=p["window"], stride=p["window"],
                                                tokenizer="byte"))
    records = {r.name: r for r in load_records()}
    table = data.windows_table()
    rows = [TYPES.index(f"codon {k} +") for k in (1, 2, 3)]
    labels = {n: base_labels(r)[rows] for n, r in records.items()}
    out = {"train": ([], [], []), "heldout": ([], [], [])}
    for acts, src, _ in kept_activations(lm, data.examples(), [hookpoint], batch_size=16):
        names = table["name"].to_numpy()[src["record"].numpy()]
        unit, position = src["unit"].numpy(), src["position"].numpy()
        x = acts[hookpoint].float().numpy()
        for i in np.flatnonzero(position >= min_context):
            r = records[names[i]]
            y = labels[r.name][:, unit[i]]
            if y.any():
                split = out["heldout" if r.heldout else "train"]
                split[0].append(x[i])
                split[1].append(r.seq[unit[i] - 6:unit[i] + 1])
                split[2].append(int(np.argmax(y)))

    def onehot(kmers):
        code = np.frombuffer("".join(kmers).encode(), np.uint8).reshape(len(kmers), -1)
        return np.concatenate([code == ord(b) for b in "ACGT"], axis=1).astype(np.float32)

    result = {"layer": hookpoint, "classes": ["codon 1", "codon 2", "codon 3"],
              "train_bases": len(out["train"][2]), "heldout_bases": len(out["heldout"][2])}
    y_train, y_test = np.array(out["train"][2]), np.array(out["heldout"][2])
    result["chance"] = float(np.bincount(y_test).max() / len(y_test))
    # a seeded subsample of the training bases, standardised: the fit takes seconds, not minutes
    pick = np.random.default_rng(seed).permutation(len(y_train))[:probe_bases]
    result["probe_train_bases"] = len(pick)
    for name, x_train, x_test in (
            ("residual", np.stack(out["train"][0]), np.stack(out["heldout"][0])),
            ("letters -6..0", onehot(out["train"][1]), onehot(out["heldout"][1]))):
        x_train = x_train[pick]
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
        clf = LogisticRegression(max_iter=300, random_state=seed)
        clf.fit((x_train - mean) / std, y_train[pick])
        result[f"accuracy {name}"] = float(clf.score((x_test - mean) / std, y_test))
    return result


def best_features(table: pd.DataFrame, baselines: pd.DataFrame, per_type: int = 3
                  ) -> pd.DataFrame:
    """The `per_type` features with the highest AUROC for each annotation type, with the
    letter baseline's AUROC for that type where there is one."""
    rows = []
    for t in TYPES:
        top = table[table["annotation"] == t].sort_values("auroc", ascending=False,
                                                          kind="stable").head(per_type)
        ref = BASELINES.get(t)
        ref_auroc = float(baselines[(baselines["baseline"] == ref)
                                    & (baselines["annotation"] == t)]["auroc"].iloc[0]) \
            if ref else np.nan
        for rank, r in enumerate(top.itertuples(), start=1):
            rows.append(dict(annotation=t, rank=rank, feature=int(r.feature), auroc=r.auroc,
                             mean_inside=r.mean_inside, mean_outside=r.mean_outside,
                             auroc_within_letter=r.auroc_within_letter,
                             frequency=r.frequency, bases_inside=r.bases_inside,
                             baseline=ref or "", baseline_auroc=ref_auroc))
    return pd.DataFrame(rows)


def run_dna_analysis(demo_dir: str | Path = DEFAULT_DNA_DEMO, out_dir: str | Path = FIGURES,
                     progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> list[Path]:
    """Enrichment of every feature, then tracks and the figure for the best one per type."""
    from ..analysis.dna_tracks import TracksConfig, run_tracks
    from .dna_figures import track_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = demo_paths(demo_dir)
    table, baselines = feature_enrichment(demo_dir, progress, cancel)
    best = best_features(table, baselines)
    written = [_csv(table.round(6), out / "dna_enrichment_all.csv"),
               _csv(best.round(4), out / "dna_enrichment.csv")]
    chosen = list(dict.fromkeys(best[best["rank"] == 1]["feature"].tolist()))
    with atomic_dir(out / "dna_tracks") as tmp:  # a fresh folder: no earlier run's features
        result = run_tracks(TracksConfig(
            model=str(p["model"]), data=str(p["heldout"]), dict=str(p["sae"]), out=str(tmp),
            features=",".join(map(str, chosen)), annotations=str(p["annotations"]),
            window=p["window"], stride=p["window"] // 2, tokenizer="model", batch_size=16,
            device="cpu"), progress=progress, cancel=cancel)
    result.out = out / "dna_tracks"
    result.bedgraphs = [result.out / b.name for b in result.bedgraphs]
    written += result.bedgraphs
    probe = out / "dna_probe.json"
    write_json(probe, frame_probe(demo_dir))
    written.append(probe)
    written += track_figure(result, best, load_records(), out / "dna_tracks")
    return written


def _csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
