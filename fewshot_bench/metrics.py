"""Per-episode measurements: query accuracy / macro-F1 and gradient stability along the adaptation path.

Definitions (g_t: step gradient flattened over trainable parameters, θ_t: trainable parameters):
  grad_norm_cv          = std_t ‖g_t‖ / mean_t ‖g_t‖
  grad_dir_consistency  = mean_t cos(g_t, g_{t+1})
  path_efficiency       = ‖θ_T − θ_0‖ / Σ_t ‖θ_{t+1} − θ_t‖
  source_alignment      = mean_t cos(g_t, g_src,t)   (when a source-task gradient is given)
  final_loss            = task loss at the last step; diverged = any non-finite loss or gradient
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score


def query_scores(labels: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


def _flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


class GradientRecorder:
    """Called once per optimisation step (after backward, before the optimizer step) by gradient-based methods."""

    def __init__(self):
        self.params: Optional[List[torch.Tensor]] = None
        self.norms: List[float] = []
        self.cosines: List[float] = []
        self.source_cosines: List[float] = []
        self.losses: List[float] = []
        self.path_length = 0.0
        self.diverged = False
        self._theta0 = self._theta_prev = self._grad_prev = None

    def record(self, loss, params: Sequence[torch.Tensor], grads: Optional[Sequence[torch.Tensor]] = None,
               source_grads: Optional[Sequence[torch.Tensor]] = None) -> None:
        """Record step t: ``loss``, the trainable ``params`` and their gradients (default: ``p.grad``)."""
        params = [p for p in params]
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        loss_value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        theta = _flat(params)
        grad = _flat(grads)
        if self._theta0 is None:
            self.params, self._theta0 = params, theta
        else:
            self.path_length += float(torch.linalg.vector_norm(theta - self._theta_prev))
        norm = float(torch.linalg.vector_norm(grad))
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            self.diverged = True
        if self._grad_prev is not None:
            self.cosines.append(_cosine(self._grad_prev, grad))
        if source_grads is not None:
            self.source_cosines.append(_cosine(grad, _flat(source_grads)))
        self.losses.append(loss_value)
        self.norms.append(norm)
        self._theta_prev, self._grad_prev = theta, grad

    def summary(self) -> Dict[str, Optional[float]]:
        """Stability figures over the recorded trajectory (None where undefined, e.g. no steps)."""
        if not self.norms:
            return {"grad_norm_cv": None, "grad_dir_consistency": None, "path_efficiency": None,
                    "source_alignment": None, "final_loss": None, "steps": 0, "diverged": self.diverged}
        theta_final = _flat(self.params)
        self.path_length += float(torch.linalg.vector_norm(theta_final - self._theta_prev))
        displacement = float(torch.linalg.vector_norm(theta_final - self._theta0))
        norms = np.asarray(self.norms)
        mean = norms.mean()
        return {
            "grad_norm_cv": float(norms.std() / mean) if mean > 0 else None,
            "grad_dir_consistency": float(np.mean(self.cosines)) if self.cosines else None,
            "path_efficiency": displacement / self.path_length if self.path_length > 0 else None,
            "source_alignment": float(np.mean(self.source_cosines)) if self.source_cosines else None,
            "final_loss": self.losses[-1],
            "steps": len(self.norms),
            "diverged": self.diverged,
        }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0
