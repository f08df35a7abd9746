"""Training pieces shared by SGG and the baselines: the support-set training loop, its AdamW, the
source-pool gradient g_src, and per-class example selection.

``train_on_support`` is the whole loop of ``full_ft`` (backbone) and ``lora`` (adapters). When the setting
has a source task and ``source_every`` > 0 (off by default: a diagnostic) it also measures ``source_alignment``
(cos(g_t, g_src) over the trained backbone parameters) without letting g_src change the update.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

try:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
except ImportError:  # a torch without the helper: see fused_adamw_devices
    _get_fused_kernels_supported_devices = None

from ..core.config import option
from ..core.errors import UserError
from .api import EpisodeContext, MethodConfig, Predictor
from ..core.hashing import derived_seed
from .row_adamw import TouchedRowAdamW
from .search_space import Choice, Range, SearchSpace


@dataclass
class SupportTrainingConfig(MethodConfig):
    steps: int = option(10, help="optimisation steps on the support set (batch = whole support set)", low=1)
    head_lr: float = option(1e-2, help="AdamW learning rate of the linear head", low=0)
    weight_decay: float = option(0.01, help="AdamW weight decay", low=0)
    source_every: int = option(0, help="with a source task: compute g_src (source-pool gradient) every this many "
                                       "steps for the source_alignment column (0: never; full_ft/lora only measure "
                                       "it: off by default, one g_src costs ~7% of a 1-shot MiniLM episode; SGG "
                                       "uses it and defaults to 2)", low=0)
    source_shots: int = option(2, help="source examples per class in the g_src batch, taken from a source episode's "
                                       "support then query set (0 = the whole source episode; 1 is refused: the "
                                       "prototype loss of one example per class is 0)", low=0)
    fused_optimizer: bool = option(True, help="AdamW with PyTorch's fused kernel on CPU/CUDA (one pass per tensor; same "
                                              "update rule, last-bit rounding may differ); false: torch's default "
                                              "implementation")

    def __post_init__(self):
        super().__post_init__()
        if self.source_shots == 1:
            raise UserError(f"method config {type(self).__name__}: field 'source_shots' must be 0 or >= 2, got 1: "
                            "with one example per class the source prototype loss, and so g_src, is 0")


@dataclass
class FullFTConfig(SupportTrainingConfig):
    lr: float = option(5e-5, help="AdamW learning rate of the backbone", low=0)


# steps x learning rates; shared by lora and SGG (which add their own fields)
SUPPORT_TRAINING_SPACE = SearchSpace({"steps": Choice((10, 20, 40)), "lr": Range(1e-5, 1e-3, log=True),
                                      "head_lr": Range(1e-3, 1e-1, log=True)}, cost=("steps",))


def fused_adamw_devices() -> set:
    """Device types this torch build has a fused AdamW kernel for (CPU only from torch 2.4 on), as torch checks it."""
    if _get_fused_kernels_supported_devices is None:  # CUDA is the one device every fused-capable release supports
        return {"cuda"}
    return set(_get_fused_kernels_supported_devices())


def adamw(groups: Sequence[dict], cfg: SupportTrainingConfig, rows: Sequence[torch.Tensor] = ()) -> TouchedRowAdamW:
    """AdamW over parameter ``groups`` (with their lrs), fused where ``cfg`` asks for it and this torch build has
    the kernel for the parameters (else torch's default implementation). When fused, the ``rows`` parameters
    (input-embedding matrices) are updated only in the rows that had a gradient (:mod:`fewshot_bench.methods.row_adamw`:
    bit-identical, a fraction of the memory traffic)."""
    params = [p for group in groups for p in group["params"]]
    devices = fused_adamw_devices() if cfg.fused_optimizer else set()
    fused = all(p.is_floating_point() and p.device.type in devices for p in params)
    return TouchedRowAdamW(groups, weight_decay=cfg.weight_decay, fused=fused or None, row_params=rows if fused else ())


def embedding_rows(model: nn.Module, trained: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The model's input-embedding matrix when it is among the ``trained`` tensors (for :func:`adamw`'s ``rows``)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return [weight] if weight is not None and any(p is weight for p in trained) else []


def train_on_support(ctx: EpisodeContext, model: nn.Module, head: nn.Module, trained: Sequence[torch.Tensor],
                     lr: float, cfg: SupportTrainingConfig) -> Predictor:
    """AdamW on ``trained`` (lr) and the head (head_lr) for ``cfg.steps`` full-support steps, recording each."""
    trained, head_params = list(trained), list(head.parameters())
    params = trained + head_params
    optimizer = adamw([{"params": trained, "lr": lr}, {"params": head_params, "lr": cfg.head_lr}], cfg,
                      rows=embedding_rows(model, trained))
    measure_source = ctx.has_source and cfg.source_every > 0
    src = None
    for t in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        if measure_source and t % cfg.source_every == 0:
            src = source_gradient(ctx, model, trained, t, shots=cfg.source_shots)
        loss = F.cross_entropy(head(ctx.embed(model, ctx.support)), ctx.support.labels)
        loss.backward()
        ctx.recorder.record(loss, params, source_grads=src, rows=optimizer.touched_rows(params))
        optimizer.step()
    model.eval()
    head.eval()
    return Predictor(lambda batch: head(ctx.embed(model, batch)), sum(p.numel() for p in params))


def source_gradient(ctx: EpisodeContext, model: nn.Module, params: Sequence[torch.Tensor], step: int, *,
                    shots: int = 2) -> List[torch.Tensor]:
    """g_src: gradient w.r.t. ``params`` of the prototype loss on a source-pool support batch.

    The batch is source episode ``derived(seed) + step`` (support, then query examples: source-pool labels
    are training data) cut to ``shots`` examples per class (0: all), so every method of one episode sees
    the same source batches. A 1-shot source episode thus still gives 2 examples per class at ``shots=2``:
    with one per class every example is its own prototype and the loss is 0. It runs under a
    forked, seeded RNG: the caller's trajectory (dropout masks) does not change. Parameters the
    source loss does not reach get zeros.
    """
    index = derived_seed(ctx.seed, "source") % 1_000_000 * 1000 + step
    episode = ctx.source_episode(index)
    labels = episode.support_labels + episode.query_labels
    keep = first_per_class(labels, shots) if shots > 0 else range(len(labels))
    texts = episode.support_texts + episode.query_texts
    batch = ctx.backbone.tokenize([texts[i] for i in keep], [labels[i] for i in keep])
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(ctx.seed, "source", step))
        loss = prototype_loss(ctx.embed(model, batch), batch.labels)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def prototype_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of −‖e − p_c‖² logits, p_c the (detached) class means of the batch: a parameter-free head."""
    emb = embeddings.float()
    classes = torch.unique(labels)
    protos = torch.stack([emb[labels == c].mean(0) for c in classes]).detach()
    return F.cross_entropy(-torch.cdist(emb, protos).pow(2), torch.searchsorted(classes, labels))


def positions_per_class(labels: Sequence[int], keep: Callable[[int], bool]) -> List[int]:
    """Positions i of ``labels`` whose rank j among the earlier examples of the same class satisfies ``keep(j)``."""
    positions, seen = [], {}
    for i, label in enumerate(labels):
        if keep(seen.get(label, 0)):
            positions.append(i)
        seen[label] = seen.get(label, 0) + 1
    return positions


def first_per_class(labels: Sequence[int], limit: int) -> List[int]:
    """Positions of the first ``limit`` examples of each class in ``labels``."""
    return positions_per_class(labels, lambda rank: rank < limit)
