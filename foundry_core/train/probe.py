"""Linear probe (SVM or logistic regression) on max+mean pooled tokens of a frozen backbone."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..configs import ProbeConfig
from ..models.backbone import pooled_features


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 64,
                     device: torch.device | str = "cpu", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (M, 2D) and labels (M,) of every cloud; FPS starts are seeded, so repeatable."""
    was_training = backbone.training
    backbone.eval()
    gen = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = backbone(batch["points"].to(device), generator=gen)
        feats.append(pooled_features(out.last).float().cpu().numpy())
        labels.append(batch["label"].numpy())
    backbone.train(was_training)
    return np.concatenate(feats), np.concatenate(labels)


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     cfg: ProbeConfig) -> float:
    """Test accuracy (%) of a linear classifier fitted on standardised training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = (LinearSVC(C=cfg.C, max_iter=5000) if cfg.classifier == "svm"
           else LogisticRegression(C=cfg.C, max_iter=2000))
    model = make_pipeline(StandardScaler(), clf).fit(train_x, train_y)
    return 100.0 * float((model.predict(test_x) == test_y).mean())


def linear_probe(backbone: nn.Module, train_set: Dataset, test_set: Dataset, cfg: ProbeConfig,
                 device: torch.device | str = "cpu") -> float:
    """Probe accuracy (%) of a backbone: features of both splits, linear classifier, test accuracy."""
    tr = extract_features(backbone, train_set, device=device)
    te = extract_features(backbone, test_set, device=device)
    return fit_linear_probe(*tr, *te, cfg)
