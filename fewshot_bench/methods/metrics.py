"""Per-episode measurements: query accuracy / macro-F1 and gradient stability along the adaptation path.

Definitions (g_t: step gradient flattened over trainable parameters, θ_t: trainable parameters):
  grad_norm_cv          = std_t ‖g_t‖ / mean_t ‖g_t‖
  grad_dir_consistency  = mean_t cos(g_t, g_{t+1})
  path_efficiency       = ‖θ_T − θ_0‖ / Σ_t ‖θ_{t+1} − θ_t‖
  source_alignment      = mean_t cos(g_t, g_src,t)   (when a source-task gradient is given)
  final_loss            = task loss at the last step; diverged = any non-finite loss or gradient

Products of float32 entries below ~1e-19 underflow in float32 (a near-zero g_src, e.g. the prototype loss of a
one-shot batch, would otherwise give |cos| > 1): the per-step inner products are float32 dots per cache-sized
slice, and a slice where a squared norm is below ``TINY`` is computed again in float64; ‖g_src‖² and the
end-of-episode norms are accumulated in float64. An input-embedding matrix updated row-sparsely
(:mod:`fewshot_bench.methods.row_adamw`) is recorded on its touched rows only.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from .row_adamw import RowSet


def query_scores(labels: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


def _cosine(dot: float, sq_a: float, sq_b: float) -> float:
    denom = math.sqrt(sq_a * sq_b)
    return dot / denom if denom > 0 else 0.0


# Elements per slice in the recorder's passes: a few slices fit in a core's cache, so each pass reads every
# model-sized tensor from memory once and does the rest (products, copies) on cached data.
SLICE = 1 << 18


# A float32 sum of squares below this may have lost products that underflowed (entries below ~1e-19): the
# recorder computes such a slice again in float64. Above it, underflowed products change the sum by < 1e-12.
TINY = 1e-20


def _slices(*tensors: torch.Tensor):
    """Aligned cache-sized slices of equally shaped tensors, flattened in logical order (views of contiguous
    tensors, copies of others: write only into contiguous ones); each tensor read once in order."""
    flat = [t.reshape(-1) for t in tensors]
    for start in range(0, flat[0].numel(), SLICE):
        yield [f[start:start + SLICE] for f in flat]


def _wide(scratch: Optional[torch.Tensor], rows: int, device: torch.device, dtype=torch.float64) -> torch.Tensor:
    """``scratch`` if it is a [rows, SLICE] buffer of ``dtype`` (default float64) on ``device``, else a new one
    (reused across slices: widening a slice into it costs far less than allocating a float64 copy per slice)."""
    if scratch is None or scratch.device != device or scratch.shape[0] < rows or scratch.dtype != dtype:
        scratch = torch.empty(rows, SLICE, dtype=dtype, device=device)
    return scratch


def _sq_sum(tensors: Sequence[torch.Tensor]) -> float:
    """Σ ‖t‖² over ``tensors``, accumulated in float64 one cache-sized slice at a time (no model-sized float64 copy)."""
    parts, scratch = [], None
    for tensor in tensors:
        for (part,) in _slices(tensor):
            scratch = _wide(scratch, 1, part.device)
            wide = scratch[0, : part.numel()].copy_(part)
            parts.append(torch.dot(wide, wide))
    return _total(parts)


def gram(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gram matrix [n, n] (float64) of ``n`` equally long flat ``vectors``: float32 dots one cache-sized slice at a
    time (each vector read from memory once), summed in float64; a slice where a squared norm is below ``TINY``
    (products may have underflowed: a near-zero g_src) is computed again in float64."""
    n = len(vectors)
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    slices = list(_slices(*vectors))

    def dots(parts):
        return torch.stack([torch.dot(parts[i], parts[j]) for i, j in pairs])

    if not slices:  # empty vectors
        return torch.zeros(n, n, dtype=torch.float64, device=vectors[0].device)
    blocks = torch.stack([dots(sl) for sl in slices]).double()  # [slices, pairs]
    diagonal = [pairs.index((i, i)) for i in range(n)]
    for redo in (blocks[:, diagonal] < TINY).any(1).nonzero().reshape(-1).tolist():
        blocks[redo] = dots([part.double() for part in slices[redo]])
    rows, cols = zip(*pairs)
    total = torch.zeros(n, n, dtype=torch.float64, device=blocks.device)
    total[list(rows), list(cols)] = blocks.sum(0)
    total[list(cols), list(rows)] = blocks.sum(0)
    return total


def _total(parts: List[torch.Tensor]) -> float:
    return float(torch.stack(parts).double().sum()) if parts else 0.0


class _RowPath:
    """The recorder's share of a row-sparse parameter (:mod:`fewshot_bench.methods.row_adamw`): exact float64 figures on the
    rows in the optimizer's mask (updated so far, or with a gradient now), closed form for the others, which only
    shrink by the factor c = 1 − lr·wd each step: their step is θ(c − 1), their squared norm c^{2t}·‖θ_0‖².
    Rows are kept compact, in order of first appearance; gradients elsewhere are zero by the mask's contract."""

    def __init__(self, theta0: torch.Tensor, factor: float):
        self.theta0 = theta0.view(theta0.shape[0], -1)
        self.factor = factor
        self.row_sq0 = torch.linalg.vector_norm(self.theta0, dim=1).double() ** 2
        self.total_sq0 = float(self.row_sq0.sum())
        self.kept = RowSet(theta0.shape[0], theta0.device)
        self.prev = self.theta0.new_zeros((0, self.theta0.shape[1]))   # θ_{t-1} of the rows in index
        self.grad_prev = self.prev.clone()                             # g_{t-1} of the rows in index
        self.steps = 0                                                 # optimizer steps taken so far (= records)

    def _extend(self, mask: torch.Tensor) -> None:
        """Add the rows of ``mask`` not kept yet, with θ_{t-1} = θ_0 shrunk once per earlier step (bit-exact:
        the optimizer multiplies them by the same factor) and g_{t-1} = 0."""
        new = self.kept.add(mask)
        if new.numel():
            rows = self.theta0.index_select(0, new)
            for _ in range(max(self.steps - 1, 0)):
                rows.mul_(self.factor)
            self.prev = torch.cat([self.prev, rows])
            self.grad_prev = torch.cat([self.grad_prev, torch.zeros_like(rows)])

    def _rest_sq(self, decays: int) -> float:
        """‖θ‖² over the rows not kept, after ``decays`` steps."""
        return (self.total_sq0 - float(self.row_sq0[self.kept.index].sum())) * self.factor ** (2 * decays)

    def step_sq_and_advance(self, param: torch.Tensor, mask: torch.Tensor) -> float:
        """‖θ_t − θ_{t-1}‖² of this parameter (0 at the first record), and θ_{t-1} ← θ_t on the kept rows."""
        self._extend(mask)
        current = param.view(param.shape[0], -1).index_select(0, self.kept.index)
        sq = 0.0
        if self.steps:
            sq = float(torch.sum((current.double() - self.prev.double()) ** 2))
            sq += (1.0 - self.factor) ** 2 * self._rest_sq(self.steps - 1)
        self.prev = current
        return sq

    def gradient_dots(self, grad: torch.Tensor, source: Optional[torch.Tensor], first: bool):
        """(‖g‖², g·g_{t-1}, g·g_src) over the kept rows in float64, then g_{t-1} ← g; call after step_sq_and_advance."""
        g = grad.reshape(grad.shape[0], -1).index_select(0, self.kept.index).double()
        dot_prev = 0.0 if first else float(torch.sum(g * self.grad_prev.double()))
        dot_src = None
        if source is not None:
            dot_src = float(torch.sum(g * source.reshape(source.shape[0], -1).index_select(0, self.kept.index).double()))
        self.grad_prev = g.float()
        self.steps += 1
        return float(torch.sum(g * g)), dot_prev, dot_src

    def final_sq(self, param: torch.Tensor) -> Tuple[float, float]:
        """(‖θ_T − θ_{T-1}‖², ‖θ_T − θ_0‖²) of this parameter after the last step."""
        current = param.view(param.shape[0], -1).index_select(0, self.kept.index).double()
        rest = self._rest_sq(0)
        last = float(torch.sum((current - self.prev.double()) ** 2))
        last += (1.0 - self.factor) ** 2 * rest * self.factor ** (2 * (self.steps - 1))
        whole = float(torch.sum((current - self.theta0.index_select(0, self.kept.index).double()) ** 2))
        whole += (1.0 - self.factor ** self.steps) ** 2 * rest
        return last, whole


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
        self._rows: Dict[int, _RowPath] = {}
        self._source_sq_cache: Dict[int, tuple] = {}  # position -> (memory key, ‖g_src‖², g_src)
        self._summary: Optional[Dict[str, Optional[float]]] = None

    @torch.no_grad()
    def record(self, loss, params: Sequence[torch.Tensor], grads: Optional[Sequence[torch.Tensor]] = None,
               source_grads: Optional[Sequence[torch.Tensor]] = None,
               rows: Optional[Dict[int, Tuple[torch.Tensor, float]]] = None) -> None:
        """Record step t: ``loss``, the trainable ``params`` and their gradients (default: ``p.grad``).

        ``source_grads`` (a source-task gradient) pairs with the first ``len(source_grads)`` parameters,
        so a method can leave out parameters the source task does not share (e.g. a trailing head).
        ``rows`` (``TouchedRowAdamW.touched_rows``, the same positions at every step): {position of a row-sparse
        parameter: (mask of the rows the optimizer has updated or that have a gradient now, the factor the other
        rows shrink by per step)}; those parameters are recorded on the masked rows only (:class:`_RowPath`).
        """
        if self._summary is not None:
            raise RuntimeError("GradientRecorder.summary() has ended the trajectory; use a new recorder")
        if grads is None:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        params = [p.detach() for p in params]
        grads = [g.detach().float() for g in grads]
        loss_value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        self.params = params  # the latest tensors (live views when the optimizer updates in place)
        rows = rows or {}
        if self._theta0 is None:
            self._theta0 = [p.clone(memory_format=torch.contiguous_format) for p in params]
            self._rows = {i: _RowPath(self._theta0[i], factor) for i, (_, factor) in rows.items()}
            self._theta_prev = [None if i in rows else p.clone(memory_format=torch.contiguous_format)
                                for i, p in enumerate(params)]
        if set(rows) != set(self._rows):
            raise ValueError(f"rows: positions {sorted(rows)} at this step, {sorted(self._rows)} at the first")
        step_sq = self._step_sq_and_advance(params)
        step_sq += sum(path.step_sq_and_advance(params[i], rows[i][0]) for i, path in self._rows.items())
        if self.norms:
            self.path_length += math.sqrt(step_sq)
        first = self._grad_prev is None
        if first:
            self._grad_prev = [None if i in rows else torch.empty_like(g, memory_format=torch.contiguous_format)
                               for i, g in enumerate(grads)]
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
        """‖θ_t − θ_{t-1}‖² over the dense parameters (0 at the first record), and θ_{t-1} ← θ_t."""
        if not self.norms:
            return 0.0
        parts, scratch = [], None
        for prev, current in zip(self._theta_prev, params):
            if prev is None:  # row-sparse: its _RowPath
                continue
            for prev_s, cur_s in _slices(prev, current):
                scratch = _wide(scratch, 1, prev_s.device, prev_s.dtype)
                delta = torch.sub(cur_s, prev_s, out=scratch[0, : prev_s.numel()])
                parts.append(torch.dot(delta, delta))
                if parts[-1] < TINY:  # float32 squares may have underflowed: this slice again in float64
                    parts[-1] = torch.dot(*[cur_s.double() - prev_s.double()] * 2)
                prev_s.copy_(cur_s)
        return _total(parts)

    def _gradient_pass(self, grads: List[torch.Tensor], source: Optional[Sequence[torch.Tensor]], first: bool):
        """(‖g‖², ‖g_shared‖², g·g_{t-1}, g_shared·g_src, ‖g_src‖²), then g_{t-1} ← g; one read of each tensor.

        Float32 dots per cache-sized slice; a slice where one of the squared norms involved is below ``TINY`` (a
        near-zero g_src, a vanishing gradient: products may have underflowed) is computed again in float64.
        ‖g_src‖² is computed once per g_src (:meth:`_source_sq`, float64)."""
        sq, sq_shared, dot_prev, dot_src, sq_src = [], [], [], [], []
        shared = len(source) if source is not None else 0
        for i, (g, prev) in enumerate(zip(grads, self._grad_prev)):
            if prev is None:  # row-sparse: its _RowPath on the masked rows, ‖g_src‖² over every row
                src = source[i].detach() if i < shared else None
                g_sq, g_dot_prev, g_dot_src = self._rows[i].gradient_dots(g, src, first)
                sq.append(torch.tensor(g_sq, dtype=torch.float64))
                dot_prev.append(torch.tensor(g_dot_prev, dtype=torch.float64))
                if src is not None:
                    sq_shared.append(sq[-1])
                    dot_src.append(torch.tensor(g_dot_src, dtype=torch.float64))
                    sq_src.append(torch.tensor(self._source_sq(i, src), dtype=torch.float64))
                continue
            src = source[i].detach() if i < shared else None
            for sl in _slices(g, prev, *(() if src is None else (src,))):
                for wide in (False, True):  # float32 dots; the slice again in float64 where one may have underflowed
                    g_s, prev_s, *src_s = [part.double() for part in sl] if wide else sl
                    slice_sq = [torch.dot(g_s, g_s)]
                    slice_prev = None if first else torch.dot(prev_s, g_s)
                    slice_src = torch.dot(g_s, src_s[0]) if src_s else None
                    if wide or min([slice_sq[0]] + ([] if first else [torch.dot(prev_s, prev_s)])
                                   + ([torch.dot(src_s[0], src_s[0])] if src_s else [])) >= TINY:
                        break
                sq.append(slice_sq[0])
                if not first:
                    dot_prev.append(slice_prev)
                if src_s:
                    sq_shared.append(slice_sq[0])
                    dot_src.append(slice_src)
                sl[1].copy_(sl[0])
            if src is not None:
                sq_src.append(torch.tensor(self._source_sq(i, src), dtype=torch.float64))
        return _total(sq), _total(sq_shared), _total(dot_prev), _total(dot_src), _total(sq_src)

    def _source_sq(self, i: int, src: torch.Tensor) -> float:
        """‖g_src‖² of parameter ``i`` (float64), computed again only when g_src is other memory or was written to
        (the cache holds the tensor, so its memory cannot pass to another tensor meanwhile)."""
        key = (src.data_ptr(), src._version)
        cached = self._source_sq_cache.get(i)
        if cached is None or cached[0] != key:
            cached = self._source_sq_cache[i] = (key, _sq_sum([src]), src)
        return cached[1]

    def summary(self) -> Dict[str, Optional[float]]:
        """Stability figures over the recorded trajectory (None where undefined, e.g. no steps).

        The first call ends the trajectory: it computes the last deltas in the recorder's own buffers (no
        model-sized temporaries), frees them and keeps the figures, which later calls return."""
        if self._summary is not None:
            return dict(self._summary)
        if not self.norms:
            return {"grad_norm_cv": None, "grad_dir_consistency": None, "path_efficiency": None,
                    "source_alignment": None, "final_loss": None, "steps": 0, "diverged": self.diverged}
        dense = [i for i, prev in enumerate(self._theta_prev) if prev is not None]
        final = [self.params[i].detach() for i in dense]
        theta_prev, theta0 = [self._theta_prev[i] for i in dense], [self._theta0[i] for i in dense]
        torch._foreach_sub_(theta_prev, final)
        torch._foreach_sub_(theta0, final)
        last_sq, displacement_sq = _sq_sum(theta_prev), _sq_sum(theta0)
        for i, path in self._rows.items():
            last, whole = path.final_sq(self.params[i].detach())
            last_sq, displacement_sq = last_sq + last, displacement_sq + whole
        path_length = self.path_length + math.sqrt(last_sq)
        displacement = math.sqrt(displacement_sq)
        self._theta0 = self._theta_prev = self._grad_prev = None
        self._rows, self._source_sq_cache = {}, {}
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
