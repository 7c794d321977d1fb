"""KMeans-Student (Foundry Table 4, supplementary B.3): static K-Means prototypes instead of DSO/CAU.

fit(): the tokenizer tokenizes a set of training clouds; its tokens (group features, before the
positional embedding) are clustered into s prototypes by scikit-learn KMeans (seeded, small
n_init). The prototypes are a buffer, so they travel with state_dict / checkpoints.

encode(): every token is assigned to its nearest prototype (hard argmin of the Euclidean distance:
a one-hot CAM as in DSO, no learning). Each prototype slot receives the grouped mean of its
assigned tokens (an empty prototype keeps the prototype vector itself; ``slot_input="prototype"``
feeds the prototype vectors for every slot, the literal reading of "encode these prototypes") and
the grouped mean of their positional embeddings (zero when empty, as DSO). The s slots go through
the (frozen, pre-trained) encoder and are broadcast back to the c token slots by the assignment
(no CAU). The classification head then pools mean + max of these retrieved tokens, which is the
paper's Point2Vec-style pooling.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ...configs import ModelConfig
from ..encoder import TransformerEncoder
from ..tokenizer import PointTokenizer, Tokens
from .token_sampling import BaselineOutput, TokenReductionBackbone


def _batches(data, batch_size: int) -> Iterable[torch.Tensor]:
    """Point batches (B, N, C) from a tensor (M, N, C), a dataset / loader of dicts with "points",
    tensors or (points, ...) tuples."""
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size]
        return
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, torch.utils.data.DataLoader):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        if isinstance(batch, dict):
            batch = batch["points"]
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield batch if batch.dim() == 3 else batch.unsqueeze(0)


class KMeansPrototypes(TokenReductionBackbone):
    """Tokenizer + encoder on s static K-Means prototypes; outputs broadcast back to the c slots."""

    kind = "kmeans"

    def __init__(self, tokenizer: PointTokenizer, encoder: TransformerEncoder, num_prototypes: int, seed: int = 0,
                 n_init: int = 2, max_iter: int = 100, slot_input: str = "mean", teacher_dim: int | None = None,
                 cfg: ModelConfig | None = None):
        super().__init__(tokenizer, encoder, teacher_dim, cfg)
        if num_prototypes < 1:
            raise ValueError("num_prototypes must be >= 1")
        if slot_input not in ("mean", "prototype"):
            raise ValueError(f"slot_input must be 'mean' or 'prototype', got {slot_input!r}")
        self.num_prototypes, self.seed = int(num_prototypes), int(seed)
        self.n_init, self.max_iter = int(n_init), int(max_iter)
        self.slot_input = slot_input
        self.register_buffer("prototypes", torch.zeros(self.num_prototypes, tokenizer.dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.init_kwargs.update(num_prototypes=self.num_prototypes, seed=self.seed, n_init=self.n_init,
                                max_iter=self.max_iter, slot_input=slot_input)

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def collect_tokens(self, data, tokenizer: PointTokenizer | None = None, batch_size: int = 32,
                       max_tokens: int | None = None, generator: torch.Generator | None = None) -> np.ndarray:
        """Tokenizer tokens (before positions) of every cloud in data -> (M, d) float64 array."""
        tokenizer = tokenizer or self.tokenizer
        was_training = tokenizer.training
        tokenizer.eval()
        device = next(tokenizer.parameters()).device
        feats, total = [], 0
        try:
            for pts in _batches(data, batch_size):
                t = tokenizer(pts.to(device), generator=generator).tokens
                feats.append(t.reshape(-1, t.shape[-1]).double().cpu().numpy())
                total += feats[-1].shape[0]
                if max_tokens is not None and total >= max_tokens:
                    break
        finally:
            tokenizer.train(was_training)
        x = np.concatenate(feats)
        return x[:max_tokens] if max_tokens is not None else x

    def fit(self, tokenizer: PointTokenizer | None, data, batch_size: int = 32, max_tokens: int | None = None,
            generator: torch.Generator | None = None) -> "KMeansPrototypes":
        """Fit the s prototypes on the tokens of data (tensor (M, N, C) of clouds, a dataset or a loader).
        tokenizer defaults to the module's own (the teacher's copy). Seeded: the FPS starts come from
        ``generator`` (default: one seeded with ``seed``) and KMeans uses random_state=seed, so the same
        data in the same batches gives the same prototypes."""
        from sklearn.cluster import KMeans

        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)

        x = self.collect_tokens(data, tokenizer, batch_size, max_tokens, generator)
        if x.shape[0] < self.num_prototypes:
            raise ValueError(f"{x.shape[0]} tokens cannot be clustered into {self.num_prototypes} prototypes")
        km = KMeans(n_clusters=self.num_prototypes, n_init=self.n_init, max_iter=self.max_iter,
                    random_state=self.seed).fit(x)
        self.kmeans_inertia = float(km.inertia_)
        self.prototypes.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.prototypes.dtype))
        self.fitted.fill_(True)
        return self

    # ------------------------------------------------------------------ forward
    def assign(self, tokens: torch.Tensor) -> torch.Tensor:
        """Nearest prototype of every token: (B, c, d) -> (B, c) int64 (exact Euclidean distances)."""
        protos = self.prototypes.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        d = torch.cdist(tokens, protos, compute_mode="donot_use_mm_for_euclid_dist")
        return d.argmin(-1)

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               points: torch.Tensor | None = None, generator: torch.Generator | None = None) -> BaselineOutput:
        self._check_no_gate(fusion_threshold)
        if not bool(self.fitted):
            raise RuntimeError("KMeansPrototypes.fit() has not been called (prototypes are not fitted)")
        s = self.num_prototypes
        if budget is not None and budget < s:
            raise ValueError(f"token budget {budget} is smaller than the number of prototypes {s}")
        assignment = self.assign(tok.tokens.detach())                          # (B, c) in [0, s)
        cam = F.one_hot(assignment, s).to(tok.tokens.dtype)                   # (B, c, s)
        counts = cam.sum(1)                                                   # (B, s)
        denom = counts.clamp_min(1.0).unsqueeze(-1)
        protos = self.prototypes.to(tok.tokens.dtype).unsqueeze(0)
        if self.slot_input == "mean":
            mean = cam.transpose(1, 2) @ tok.tokens / denom
            slots = torch.where((counts > 0).unsqueeze(-1), mean, protos.expand_as(mean))
        else:
            slots = protos.expand(tok.tokens.shape[0], -1, -1)
        pos = cam.transpose(1, 2) @ tok.pos / denom                           # zero when empty
        b = assignment.shape[0]
        enc = self.encoder(self.token_proj(slots), self.pos_proj(pos))
        out = self._output(tok, enc, assignment, assignment, torch.full((b,), s, dtype=torch.long,
                                                                        device=assignment.device),
                           merged=torch.ones_like(assignment, dtype=torch.bool), cam=cam,
                           info={"counts": counts, "prototype_out": enc.last})
        return out
