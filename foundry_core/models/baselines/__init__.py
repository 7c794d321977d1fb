"""Token-reduction baselines of the Foundry paper (Tables 4-5): random token sampling, fewer centers
(larger groups), ToMe and K-Means prototypes. Every baseline returns all c token slots, so it is
distilled with the same FMD loss as the Foundry student and is a drop-in backbone for the heads."""
from __future__ import annotations

from ..encoder import TransformerEncoder
from ..tokenizer import PointTokenizer
from .kmeans import KMeansPrototypes
from .token_sampling import (BaselineOutput, FewerCenters, RandomTokenSampling, TokenReductionBackbone, gather_slots,
                             nearest_index)
from .tome import (Merge, ToMeBackbone, ToMeEncoder, ToMeTrace, bipartite_soft_matching, halving_schedule,
                   merge_wavg, proportional_bias, tome_attention, tome_encode)

BASELINES: dict[str, type[TokenReductionBackbone]] = {
    "random": RandomTokenSampling,
    "fewer_centers": FewerCenters,
    "tome": ToMeBackbone,
    "kmeans": KMeansPrototypes,
}


def build_baseline(kind: str, tokenizer: PointTokenizer, encoder: TransformerEncoder, cfg=None,
                   **init_kwargs) -> TokenReductionBackbone:
    """Rebuild a baseline from its ``kind`` and ``init_kwargs`` (e.g. from checkpoint metadata)."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; choose from {sorted(BASELINES)}")
    return BASELINES[kind](tokenizer, encoder, cfg=cfg, **init_kwargs)


__all__ = ["BASELINES", "BaselineOutput", "FewerCenters", "KMeansPrototypes", "Merge", "RandomTokenSampling",
           "ToMeBackbone", "ToMeEncoder", "ToMeTrace", "TokenReductionBackbone", "bipartite_soft_matching",
           "build_baseline", "gather_slots", "halving_schedule", "merge_wavg", "nearest_index",
           "proportional_bias", "tome_attention", "tome_encode"]
