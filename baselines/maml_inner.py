"""The functional MAML inner loop on ``torch.func``: the backbone called with ``functional_call`` on a dict of
tensors, inner gradients from ``vjp`` (backbone) and ``grad_and_value`` (head), the prototype-initialised
head, and the differentiable episode loss that :mod:`baselines.maml` meta-trains through."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vjp

from fewshot_bench.methods.architecture import input_embedding_name, length_buckets
from fewshot_bench.methods.backbone import Backbone, Batch

HEAD_W, HEAD_B = "head.weight", "head.bias"

Tensors = Dict[str, torch.Tensor]


class _Embedder(nn.Module):
    """Wraps a backbone model so that ``functional_call`` returns pooled vectors [B, H]."""

    def __init__(self, backbone: Backbone, model: nn.Module):
        super().__init__()
        self.model = model
        self._backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self._backbone.embed(self.model, Batch(input_ids, attention_mask))
        return out if out.dtype in (torch.float32, torch.float64) else out.float()


def _head_loss(e: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(e @ weight.T + bias, labels)


def init_head(e: torch.Tensor, labels: torch.Tensor, n_way: int, kind: str = "proto",
              scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Episode head from support embeddings ``e`` (differentiable): proto W_k = 2s·c_k, b_k = -s·|c_k|^2, or zeros."""
    if kind == "zero":
        return e.new_zeros(n_way, e.shape[1]), e.new_zeros(n_way)
    onehot = F.one_hot(labels, n_way).to(e.dtype)  # [B, N]
    protos = (onehot.T @ e) / onehot.sum(0).clamp_min(1.0).unsqueeze(1)
    return 2.0 * scale * protos, -scale * (protos * protos).sum(1)


class InnerLoop:
    """The functional MAML inner loop and episode loss for one backbone model (the template).

    ``params`` dicts map every backbone parameter name to a tensor; the template module's own
    parameters are never read by the forward passes, only its structure.
    """

    def __init__(self, backbone: Backbone, model: nn.Module, adapt: Sequence[str], head_init: str = "proto",
                 autocast: Optional[Callable] = None, bucket: Optional[bool] = None, sparse_rows: bool = True,
                 head_scale: float = 1.0):
        self.backbone = backbone
        self.bucket = bucket  # None: length buckets on CPU only
        self.embedder = _Embedder(backbone, model)
        self.adapt = list(adapt)
        self.head_init = head_init
        self.head_scale = head_scale
        self.autocast = autocast
        self.emb_name = input_embedding_name(model) if sparse_rows else None

    def used_rows(self, params: Tensors, *batches: Batch):
        """(params with the token-embedding matrix cut to the rows the batches use, remapped batches, rows).

        Exact: rows of tokens absent from the episode get no inner gradient and do not enter any forward,
        so adapting / differentiating the [R, H] row block (one gather, one scatter in the outer backward)
        equals doing it on the [V, H] matrix — without a dense V×H gradient at every forward. With
        padding_idx 0 the pad row stays row 0 (the smallest id), so F.embedding still leaves it untrained.
        """
        if self.emb_name is None or self.emb_name not in params:
            return params, batches, None
        ids = [b.input_ids.reshape(-1) for b in batches]
        rows = torch.unique(torch.cat(ids + [ids[0].new_zeros(1)]))  # sorted; includes the pad id 0
        remapped = tuple(Batch(torch.searchsorted(rows, b.input_ids), b.attention_mask, b.labels) for b in batches)
        return {**params, self.emb_name: params[self.emb_name][rows]}, remapped, rows

    def lr_names(self) -> List[str]:
        return self.adapt + [HEAD_W, HEAD_B]

    def embed(self, params: Tensors, batch: Batch) -> torch.Tensor:
        """Pooled vectors [B, H] of ``batch`` under ``params``; on CPU, rows run in length buckets."""
        full = {"model." + n: t for n, t in params.items()}
        with self.autocast() if self.autocast is not None else contextlib.nullcontext():
            bucket = batch.input_ids.device.type == "cpu" if self.bucket is None else self.bucket
            groups = length_buckets(batch) if bucket else None
            if not groups or len(groups) == 1:
                width = int(batch.attention_mask.sum(1).max()) if groups else batch.input_ids.shape[1]
                return functional_call(self.embedder, full, (batch.input_ids[:, :width], batch.attention_mask[:, :width]))
            outs, order = [], []
            for rows, width in groups:
                index = torch.tensor(rows, device=batch.input_ids.device)
                outs.append(functional_call(self.embedder, full, (batch.input_ids[index, :width],
                                                                  batch.attention_mask[index, :width])))
                order += rows
            inverse = torch.empty(len(order), dtype=torch.long, device=batch.input_ids.device)
            inverse[torch.tensor(order, device=inverse.device)] = torch.arange(len(order), device=inverse.device)
            return torch.cat(outs)[inverse]

    def step(self, params: Tensors, head: Optional[Tuple[torch.Tensor, torch.Tensor]], support: Batch, n_way: int,
             cached: Optional[torch.Tensor] = None):
        """One inner-step gradient: (loss, {name: grad}, (gW, gb), head, embeddings).

        The gradients are partial derivatives of the support loss w.r.t. the adapted tensors and the head
        (head held fixed for the backbone part). ``head`` None: initialise it from this step's embeddings.
        ``cached``: the support embeddings when nothing in the backbone adapts (they do not change).
        """
        fast = {n: params[n] for n in self.adapt}
        pull = None
        if cached is not None:
            e = cached
        elif fast:
            e, pull = vjp(lambda f: self.embed({**params, **f}, support), fast)
        else:
            e = self.embed(params, support)
        if head is None:
            head = init_head(e, support.labels, n_way, self.head_init, self.head_scale)
        (g_e, g_w, g_b), loss = grad_and_value(_head_loss, argnums=(0, 1, 2))(e, head[0], head[1], support.labels)
        grads = pull(g_e)[0] if pull is not None else {}
        return loss, grads, (g_w, g_b), head, e

    def episode_loss(self, params: Tensors, lrs: Dict[str, torch.Tensor], support: Batch, query: Batch, n_way: int,
                     steps: int, first_order: bool) -> torch.Tensor:
        """Query loss after ``steps`` inner SGD steps from ``params`` (differentiable w.r.t. params and lrs).

        first_order: inner gradients are constants (detached); forward passes after step 0 run on detached
        copies (they only feed those constants), so the outer graph holds step 0 (the head init) and the query.
        """
        params, (support, query), _ = self.used_rows(dict(params), support, query)
        head = None
        cached = None
        for t in range(steps):
            plain = first_order and t > 0
            if plain:
                use_params = {n: v.detach() for n, v in params.items()}
                use_head = (head[0].detach(), head[1].detach())
                use_cached = None if cached is None else cached.detach()
            else:
                use_params, use_head, use_cached = params, head, cached
            _, grads, (g_w, g_b), new_head, e = self.step(use_params, use_head, support, n_way, use_cached)
            if head is None:
                head = new_head
            if not self.adapt:
                cached = e if cached is None else cached
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
                g_w, g_b = g_w.detach(), g_b.detach()
            for n in self.adapt:
                params[n] = params[n] - lrs[n] * grads[n]
            head = (head[0] - lrs[HEAD_W] * g_w, head[1] - lrs[HEAD_B] * g_b)
        if head is None:
            head = init_head(self.embed(params, support), support.labels, n_way, self.head_init, self.head_scale)
        return _head_loss(self.embed(params, query), head[0], head[1], query.labels)
