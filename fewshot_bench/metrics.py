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
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score


def query_scores(labels: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


def _tensor_norms(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Per-tensor 2-norms (one fused pass)."""
    return torch._foreach_norm([t.float() for t in tensors]) if tensors else []


def _combine(norms: Sequence[torch.Tensor]) -> float:
    """‖concat(tensors)‖ from their per-tensor norms."""
    return float(torch.linalg.vector_norm(torch.stack(list(norms)))) if norms else 0.0


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """‖concat(tensors)‖ without concatenating."""
    return _combine(_tensor_norms(tensors))


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """<concat(a), concat(b)> without temporaries the size of the model."""
    dots = [torch.dot(x.reshape(-1).float(), y.reshape(-1).float()) for x, y in zip(a, b)]
    return float(torch.stack(dots).sum()) if dots else 0.0


def _cosine(dot: float, norm_a: float, norm_b: float) -> float:
    denom = norm_a * norm_b
    return dot / denom if denom > 0 else 0.0


class GradientRecorder:
    """Called once per optimisation step (after backward, before the optimizer step) by gradient-based methods.

    Works tensor by tensor (no flattened copies): it keeps θ_0, θ_{t-1} and g_{t-1}.
    """

    def __init__(self):
        self.params: Optional[List[torch.Tensor]] = None
        self.norms: List[float] = []
        self.cosines: List[float] = []
        self.source_cosines: List[float] = []
        self.losses: List[float] = []
        self.path_length = 0.0
        self.diverged = False
        self._theta0 = self._theta_prev = self._grad_prev = None
        self._summary: Optional[Dict[str, Optional[float]]] = None

    @torch.no_grad()
    def record(self, loss, params: Sequence[torch.Tensor], grads: Optional[Sequence[torch.Tensor]] = None,
               source_grads: Optional[Sequence[torch.Tensor]] = None) -> None:
        """Record step t: ``loss``, the trainable ``params`` and their gradients (default: ``p.grad``).

        ``source_grads`` (a source-task gradient) pairs with the first ``len(source_grads)`` parameters,
        so a method can leave out parameters the source task does not share (e.g. a trailing head).
        """
        if self._summary is not None:
            raise RuntimeError("GradientRecorder.summary() has ended the trajectory; use a new recorder")
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        params = [p.detach() for p in params]
        grads = [g.detach() for g in grads]
        loss_value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        self.params = params  # the latest tensors (live views when the optimizer updates in place)
        if self._theta0 is None:
            self._theta0 = [p.clone() for p in params]
            self._theta_prev = [p.clone() for p in params]
        else:
            torch._foreach_sub_(self._theta_prev, params)  # in place: θ_{t-1} − θ_t, no model-sized temporaries
            self.path_length += _norm(self._theta_prev)
            torch._foreach_copy_(self._theta_prev, params)
        tensor_norms = _tensor_norms(grads)
        norm = _combine(tensor_norms)
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            self.diverged = True
        if self._grad_prev is None:
            self._grad_prev = [g.clone() for g in grads]
        else:  # ‖g_{t-1}‖ is the norm recorded last step: only the dot product is a new pass
            self.cosines.append(_cosine(_dot(self._grad_prev, grads), self.norms[-1], norm))
            torch._foreach_copy_(self._grad_prev, grads)
        if source_grads is not None:
            shared = len(source_grads)
            self.source_cosines.append(_cosine(_dot(grads[:shared], source_grads), _combine(tensor_norms[:shared]),
                                               _norm(source_grads)))
        self.losses.append(loss_value)
        self.norms.append(norm)

    def summary(self) -> Dict[str, Optional[float]]:
        """Stability figures over the recorded trajectory (None where undefined, e.g. no steps).

        The first call ends the trajectory: it computes the last deltas in the recorder's own buffers (no
        model-sized temporaries), frees them and keeps the figures, which later calls return."""
        if self._summary is not None:
            return dict(self._summary)
        if not self.norms:
            return {"grad_norm_cv": None, "grad_dir_consistency": None, "path_efficiency": None,
                    "source_alignment": None, "final_loss": None, "steps": 0, "diverged": self.diverged}
        final = [p.detach() for p in self.params]
        torch._foreach_sub_(self._theta_prev, final)
        torch._foreach_sub_(self._theta0, final)
        path_length = self.path_length + _norm(self._theta_prev)
        displacement = _norm(self._theta0)
        self._theta0 = self._theta_prev = self._grad_prev = None
        norms = np.asarray(self.norms)
        mean = norms.mean()
        self._summary = {
            "grad_norm_cv": float(norms.std() / mean) if mean > 0 else None,
            "grad_dir_consistency": float(np.mean(self.cosines)) if self.cosines else None,
            "path_efficiency": displacement / path_length if path_length > 0 else None,
            "source_alignment": float(np.mean(self.source_cosines)) if self.source_cosines else None,
            "final_loss": self.losses[-1],
            "steps": len(self.norms),
            "diverged": self.diverged,
        }
        return dict(self._summary)
