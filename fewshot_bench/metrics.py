"""Per-episode measurements: query accuracy / macro-F1 and gradient stability along the adaptation path.

Definitions (g_t: step gradient flattened over trainable parameters, θ_t: trainable parameters):
  grad_norm_cv          = std_t ‖g_t‖ / mean_t ‖g_t‖
  grad_dir_consistency  = mean_t cos(g_t, g_{t+1})
  path_efficiency       = ‖θ_T − θ_0‖ / Σ_t ‖θ_{t+1} − θ_t‖
  source_alignment      = mean_t cos(g_t, g_src,t)   (when a source-task gradient is given)
  final_loss            = task loss at the last step; diverged = any non-finite loss or gradient

Inner products and norms are accumulated in float64: products of float32 entries below ~1e-19 underflow in
float32 (a near-zero g_src, e.g. the prototype loss of a one-shot batch, would otherwise give |cos| > 1).
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


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """‖concat(tensors)‖ without concatenating (one fused pass, accumulated in float64)."""
    norms = torch._foreach_norm(list(tensors), 2, dtype=torch.float64) if tensors else []
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _cosine(dot: float, sq_a: float, sq_b: float) -> float:
    denom = math.sqrt(sq_a * sq_b)
    return dot / denom if denom > 0 else 0.0


# Elements per slice in the recorder's passes: a few slices fit in a core's cache, so each pass reads every
# model-sized tensor from memory once and does the rest (products, copies) on cached data.
SLICE = 1 << 18


def _slices(*tensors: torch.Tensor):
    """Aligned cache-sized slices of equally shaped tensors, flattened in logical order (views of contiguous
    tensors, copies of others: write only into contiguous ones); each tensor read once in order."""
    flat = [t.reshape(-1) for t in tensors]
    for start in range(0, flat[0].numel(), SLICE):
        yield [f[start:start + SLICE] for f in flat]


def _wide(scratch: Optional[torch.Tensor], rows: int, device: torch.device) -> torch.Tensor:
    """``scratch`` if it is a float64 [rows, SLICE] buffer on ``device``, else a new one (reused across slices:
    widening a slice into it costs far less than allocating a float64 copy per slice)."""
    if scratch is None or scratch.device != device or scratch.shape[0] < rows:
        scratch = torch.empty(rows, SLICE, dtype=torch.float64, device=device)
    return scratch


def float64_gram(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gram matrix [n, n] of ``n`` equally long flat ``vectors``, accumulated in float64 one cache-sized slice at a
    time (no float64 copy of a whole vector)."""
    gram = torch.zeros(len(vectors), len(vectors), dtype=torch.float64, device=vectors[0].device)
    scratch = None
    for sl in _slices(*vectors):
        scratch = _wide(scratch, len(vectors), sl[0].device)
        block = scratch[: len(vectors), : sl[0].numel()]
        for row, part in zip(block, sl):
            row.copy_(part)
        gram += block @ block.T
    return gram


def _total(parts: List[torch.Tensor]) -> float:
    return float(torch.stack(parts).sum()) if parts else 0.0


class GradientRecorder:
    """Called once per optimisation step (after backward, before the optimizer step) by gradient-based methods.

    Works tensor by tensor (no flattened copies): it keeps θ_0, θ_{t-1} and g_{t-1} (contiguous copies, whatever
    the strides of the parameters) and updates the last two in one cache-blocked pass each per step.
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
        grads = [g.detach().float() for g in grads]
        loss_value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        self.params = params  # the latest tensors (live views when the optimizer updates in place)
        if self._theta0 is None:
            self._theta0 = [p.clone(memory_format=torch.contiguous_format) for p in params]
            self._theta_prev = [p.clone(memory_format=torch.contiguous_format) for p in params]
        else:
            self.path_length += math.sqrt(self._step_sq_and_advance(params))
        first = self._grad_prev is None
        if first:
            self._grad_prev = [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]
        sq, sq_shared, dot_prev, dot_src, sq_src = self._gradient_pass(grads, source_grads, first)
        norm = math.sqrt(sq)
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            self.diverged = True
        if not first:
            self.cosines.append(_cosine(dot_prev, self.norms[-1] ** 2, sq))
        if source_grads is not None:
            self.source_cosines.append(_cosine(dot_src, sq_shared, sq_src))
        self.losses.append(loss_value)
        self.norms.append(norm)

    def _step_sq_and_advance(self, params: List[torch.Tensor]) -> float:
        """‖θ_t − θ_{t-1}‖², and θ_{t-1} ← θ_t."""
        parts, scratch = [], None
        for prev, current in zip(self._theta_prev, params):
            for prev_s, cur_s in _slices(prev, current):
                scratch = _wide(scratch, 1, prev_s.device)
                delta = torch.sub(cur_s, prev_s, out=scratch[0, : prev_s.numel()])
                parts.append(torch.dot(delta, delta))
                prev_s.copy_(cur_s)
        return _total(parts)

    def _gradient_pass(self, grads: List[torch.Tensor], source: Optional[Sequence[torch.Tensor]], first: bool):
        """(‖g‖², ‖g_shared‖², g·g_{t-1}, g_shared·g_src, ‖g_src‖²), then g_{t-1} ← g; one read of each tensor."""
        sq, sq_shared, dot_prev, dot_src, sq_src = [], [], [], [], []
        shared = len(source) if source is not None else 0
        scratch = None
        for i, (g, prev) in enumerate(zip(grads, self._grad_prev)):
            tensors = (g, prev) + ((source[i].detach(),) if i < shared else ())
            for sl in _slices(*tensors):
                scratch = _wide(scratch, 3, g.device)
                g64, prev64, *src64 = [row[: s.numel()].copy_(s) for row, s in zip(scratch, sl)]
                if not first:
                    dot_prev.append(torch.dot(prev64, g64))
                sq.append(torch.dot(g64, g64))
                if src64:
                    sq_shared.append(sq[-1])
                    dot_src.append(torch.dot(g64, src64[0]))
                    sq_src.append(torch.dot(src64[0], src64[0]))
                sl[1].copy_(sl[0])
        return _total(sq), _total(sq_shared), _total(dot_prev), _total(dot_src), _total(sq_src)

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
