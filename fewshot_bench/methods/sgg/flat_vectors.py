"""SGG's flat gradient vectors with input-embedding matrices handled on their non-zero rows only.

An input-embedding matrix gets a non-zero gradient only in the rows of the tokens a batch contains (~70 of MiniLM's
30,522 rows for a 1-shot support set), yet a dense pass over a flat gradient reads and writes all 11.7M values of
it, half of MiniLM. :class:`FlatVectors` keeps U, the rows of such matrices in which any gradient it has flattened
was non-zero (U only grows within an episode), and every flat vector it builds is zero outside U there. Copies,
combinations and the running average then touch the dense parameters and U's rows only, and give the same vectors
element for element as dense passes; inner products sum the same terms in another order (U's rows in float64), so
they agree to rounding.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..metrics import gram
from ..row_adamw import RowSet, nonzero_rows
from .guidance import apply_coefficients


class _Rows(NamedTuple):
    position: int          # of the matrix in the parameter list
    offset: int            # of its first value in the flat vector
    rows: int
    width: int


class FlatVectors:
    """Flat vectors over ``params`` (in order), the matrices among ``row_params`` row-sparse as the module says.

    Vectors may also cover a prefix of ``params`` (g_src over the shared parameters) when no row-sparse matrix
    straddles its end. Every vector passed to a method must have been built by :meth:`zeros` and written only
    through this object (:meth:`flatten_into`, :meth:`combine`, :meth:`average_`, or as a copy of such a vector).
    With no ``row_params`` every pass is the dense one.
    """

    def __init__(self, params: Sequence[torch.Tensor], row_params: Sequence[torch.Tensor] = ()):
        params = list(params)
        row_ids = {id(p) for p in row_params}
        self.segments: List[_Rows] = []
        self.dense: List[Tuple[int, int]] = []  # [start, end) ranges of the flat vector outside the segments
        start = offset = 0
        for i, p in enumerate(params):
            if id(p) in row_ids:
                self.segments.append(_Rows(i, offset, p.shape[0], p[0].numel()))
                if offset > start:
                    self.dense.append((start, offset))
                start = offset + p.numel()
            offset += p.numel()
        if offset > start:
            self.dense.append((start, offset))
        self.numel = offset
        self.dtype, self.device = (params[0].dtype, params[0].device) if params else (None, None)
        self.reached = [RowSet(s.rows, self.device) for s in self.segments]  # U, per segment

    def zeros(self, numel: Optional[int] = None) -> torch.Tensor:
        """A new all-zero flat vector of ``numel`` values (default: all parameters), dtype and device of the first."""
        return torch.zeros(self.numel if numel is None else numel, dtype=self.dtype, device=self.device)

    def _ranges(self, numel: int) -> List[Tuple[int, int]]:
        return [(s, min(e, numel)) for s, e in self.dense if s < numel]

    def _segments(self, numel: int) -> List[Tuple[_Rows, torch.Tensor]]:
        return [(s, u.index) for s, u in zip(self.segments, self.reached) if s.offset < numel]

    @staticmethod
    def _matrix(vector: torch.Tensor, segment: _Rows) -> torch.Tensor:
        return vector[segment.offset: segment.offset + segment.rows * segment.width].view(segment.rows, segment.width)

    def _rows(self, vector: torch.Tensor, segment: _Rows, index: torch.Tensor) -> torch.Tensor:
        """The rows ``index`` of ``segment`` in ``vector`` (a compact copy)."""
        return self._matrix(vector, segment).index_select(0, index)

    def admit(self, tensors: Sequence[torch.Tensor]) -> None:
        """Add to U the non-zero rows of the row-sparse matrices among ``tensors`` (aligned with ``params``)."""
        for segment, reached in zip(self.segments, self.reached):
            if segment.position < len(tensors):
                reached.add(nonzero_rows(tensors[segment.position].reshape(segment.rows, segment.width)))

    def flatten_into(self, out: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Copy ``tensors`` (the first ``len(tensors)`` parameters' gradients) into the flat vector ``out``."""
        tensors = list(tensors)
        self.admit(tensors)
        sparse = {s.position for s in self.segments}
        views = torch.split(out, [t.numel() for t in tensors])
        dense = [i for i in range(len(tensors)) if i not in sparse]
        if dense:
            torch._foreach_copy_([views[i].view_as(tensors[i]) for i in dense], [tensors[i] for i in dense])
        for segment, index in self._segments(out.numel()):
            source = tensors[segment.position].reshape(segment.rows, segment.width)
            self._matrix(out, segment).index_copy_(0, index, source.index_select(0, index))
        return out

    def gram(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Gram matrix [n, n] (float64) of equally long flat ``vectors``: :func:`~fewshot_bench.methods.metrics.gram`
        over each dense range, plus U's rows in float64."""
        numel = vectors[0].numel()
        total = None
        for start, end in self._ranges(numel):
            part = gram([v[start:end] for v in vectors])
            total = part if total is None else total + part
        for segment, index in self._segments(numel):
            rows = torch.stack([self._rows(v, segment, index).reshape(-1) for v in vectors]).double()
            part = rows @ rows.T
            total = part if total is None else total + part
        if total is None:  # empty vectors
            total = torch.zeros(len(vectors), len(vectors), dtype=torch.float64, device=vectors[0].device)
        return total

    def combine(self, g: torch.Tensor, k: int, a: float, b: float, c: float, ref: Optional[torch.Tensor],
                src: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """``out = a·g + b·ref − c·[src; 0]`` (src over the first ``k`` values; ``ref`` used only if b != 0, ``src``
        only if c != 0)."""
        for start, end in self._ranges(g.numel()):
            shared = max(0, min(k, end) - start)
            apply_coefficients(g[start:end], shared, a, b, c, None if b == 0.0 else ref[start:end],
                               None if c == 0.0 else src[start:start + shared], out=out[start:end])
        for segment, index in self._segments(g.numel()):
            compact = apply_coefficients(self._rows(g, segment, index), index.numel(), a, b, c,
                                         self._rows(ref, segment, index) if b != 0.0 else None,
                                         self._rows(src, segment, index) if c != 0.0 else None)
            self._matrix(out, segment).index_copy_(0, index, compact)
        return out

    def average_(self, running: torch.Tensor, value: torch.Tensor, beta: float) -> torch.Tensor:
        """``running ← β·running + (1 − β)·value`` in place."""
        for start, end in self._ranges(running.numel()):
            running[start:end].mul_(beta).add_(value[start:end], alpha=1 - beta)
        for segment, index in self._segments(running.numel()):
            rows = self._rows(running, segment, index).mul_(beta).add_(self._rows(value, segment, index), alpha=1 - beta)
            self._matrix(running, segment).index_copy_(0, index, rows)
        return running
