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


def _classifier(cfg: ProbeConfig, C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = LinearSVC(C=C, max_iter=5000) if cfg.classifier == "svm" else LogisticRegression(C=C, max_iter=2000)
    return make_pipeline(StandardScaler(), clf)


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     cfg: ProbeConfig, C: float | None = None) -> float:
    """Test accuracy (%) of a linear classifier fitted on standardised training features."""
    model = _classifier(cfg, cfg.C if C is None else C).fit(train_x, train_y)
    return 100.0 * float((model.predict(test_x) == test_y).mean())


def select_C(train_x: np.ndarray, train_y: np.ndarray, cfg: ProbeConfig, folds: int = 3, seed: int = 0) -> float:
    """Regularisation chosen by stratified k-fold cross-validation on the TRAINING features only."""
    import warnings

    from sklearn.model_selection import StratifiedKFold, cross_val_score

    n_min = int(np.bincount(train_y).min()) if len(train_y) else 0
    folds = max(2, min(folds, n_min))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = [cross_val_score(_classifier(cfg, C), train_x, train_y, cv=cv).mean() for C in cfg.cv_grid]
    return float(cfg.cv_grid[int(np.argmax(scores))])


def probe_scores(backbone: nn.Module, train_set: Dataset, test_set: Dataset, cfg: ProbeConfig,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Probe accuracies (%) from one feature extraction: with the recipe's C ("fixed") and with C
    selected by cross-validation on the training split ("cv", and the chosen "cv_C")."""
    tr = extract_features(backbone, train_set, device=device)
    te = extract_features(backbone, test_set, device=device)
    out = {"fixed": fit_linear_probe(*tr, *te, cfg)}
    if cfg.cv_grid:
        out["cv_C"] = select_C(*tr, cfg)
        out["cv"] = fit_linear_probe(*tr, *te, cfg, C=out["cv_C"])
    return out


def linear_probe(backbone: nn.Module, train_set: Dataset, test_set: Dataset, cfg: ProbeConfig,
                 device: torch.device | str = "cpu") -> float:
    """Probe accuracy (%) of a backbone: features of both splits, linear classifier, test accuracy."""
    tr = extract_features(backbone, train_set, device=device)
    te = extract_features(backbone, test_set, device=device)
    return fit_linear_probe(*tr, *te, cfg)
