"""Closed-form linear probes (numpy): ridge regression and a least-squares classifier.

Frozen-feature evaluations fit these on a training split and report on a held-out split; the
ridge strength is chosen on a validation slice of the training split, never on the test split.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RidgeProbe", "r2_score"]


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per output column."""
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - ss_res / np.maximum(ss_tot, 1e-12)


class RidgeProbe:
    """Standardised ridge regression; for classification, fit one-hot targets and take the argmax."""

    def __init__(self, alphas: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5), val_frac: float = 0.2, seed: int = 0):
        self.alphas, self.val_frac, self.seed = alphas, val_frac, seed

    def _solve(self, X: np.ndarray, Y: np.ndarray, alpha: float) -> np.ndarray:
        d = X.shape[1]
        return np.linalg.solve(X.T @ X + alpha * X.shape[0] * np.eye(d) / d, X.T @ Y)

    def fit(self, X: np.ndarray, Y: np.ndarray, score=None) -> "RidgeProbe":
        X = np.asarray(X, np.float64)
        Y = np.asarray(Y, np.float64)
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        self.y_mu = Y.mean(0)
        Xs, Yc = (X - self.mu) / self.sd, Y - self.y_mu
        idx = np.random.default_rng(self.seed).permutation(len(X))
        n_val = max(1, int(len(X) * self.val_frac))
        val, tr = idx[:n_val], idx[n_val:]
        score = score or (lambda y, p: -np.mean((y - p) ** 2))
        best = max(self.alphas, key=lambda a: score(Yc[val], Xs[val] @ self._solve(Xs[tr], Yc[tr], a)))
        self.alpha = best
        self.W = self._solve(Xs, Yc, best)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float64) - self.mu) / self.sd) @ self.W + self.y_mu
