"""Which genes a feature reads: per-gene scores against the background of gene frequency.

For feature f and gene g, over the tokens that carry a gene (`unit >= 0`):
- `mean_act[g, f]`: mean activation over g's tokens (so a gene that appears in every cell does
  not win by frequency alone); the ranking score for top genes.
- `rate[g, f]`: firing rate on g's tokens; `base_rate[f]`: firing rate over all gene tokens.
- `log_odds[g, f]`: log odds ratio of firing on g's tokens against all other gene tokens, with
  0.5 added to each cell of the 2x2 table (Haldane) so it is finite.
Genes with fewer than `min_count` tokens are not ranked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import FeatureStatsResult
from .topk import grouped_topk


@dataclass
class TopGenes:
    """The `n` best genes per feature (`gene` = -1 where fewer qualify)."""

    gene: np.ndarray      # [F, n] gene (unit) index
    mean_act: np.ndarray  # [F, n]
    rate: np.ndarray      # [F, n]
    log_odds: np.ndarray  # [F, n]
    base_rate: np.ndarray  # [F]

    def names(self, genes) -> np.ndarray:
        """Gene symbols [F, n] ("" where unfilled)."""
        lookup = np.asarray(list(genes) + [""], dtype=object)
        return lookup[self.gene]

    def summary(self, genes, n: int | None = None) -> list[str]:
        """One string per feature: "CD74 (0.81), HLA-DRA (0.44)" (mean activation per token)."""
        names = self.names(genes)
        out = []
        for f in range(self.gene.shape[0]):
            keep = self.gene[f] >= 0
            items = [f"{g} ({v:.3g})" for g, v in zip(names[f][keep], self.mean_act[f][keep])]
            out.append(", ".join(items[:n]))
        return out


def top_genes(stats: FeatureStatsResult, n: int = 10, min_count: int = 5) -> TopGenes:
    counts = stats.unit_tokens
    total = int(counts.sum())
    coo = stats.unit_sum.tocoo()
    g, f = coo.row.astype(np.int64), coo.col.astype(np.int64)
    ok = counts[g] >= max(min_count, 1)
    g, f = g[ok], f[ok]
    mean = coo.data[ok] / counts[g]
    vals, genes = grouped_topk(f, mean, g, n, stats.num_features)
    fired_f = np.asarray(stats.unit_fires.sum(axis=0)).ravel().astype(np.float64)
    base_rate = fired_f / max(total, 1)

    filled = genes >= 0
    gi = np.where(filled, genes, 0)
    fi = np.broadcast_to(np.arange(stats.num_features)[:, None], genes.shape)
    a = np.asarray(stats.unit_fires[gi.ravel(), fi.ravel()]).reshape(genes.shape).astype(float)
    cnt = counts[gi].astype(float)
    b = cnt - a
    c = fired_f[:, None] - a
    d = (total - cnt) - c
    log_odds = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = a / cnt
    nan = np.where(filled, 1.0, np.nan)
    return TopGenes(genes, np.where(filled, vals, np.nan), rate * nan, log_odds * nan, base_rate)
