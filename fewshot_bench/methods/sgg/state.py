"""SGG's per-episode running state: r_t, the gradient-norm EMA behind τ_t, the EMA of cos(g_bb, g_src)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .config import SGGConfig
from .flat_vectors import FlatVectors


class GuidanceState:
    """Per-episode running statistics: r_t (a flat vector of ``flat``), the norm EMA behind τ_t, the EMA of
    cos(g_bb, g_src)."""

    def __init__(self, config: SGGConfig, flat: FlatVectors):
        self.config = config
        self.flat = flat
        self.ref: Optional[torch.Tensor] = None
        self.norm_ema: Optional[float] = None
        self.cos_ema: Optional[float] = None

    @property
    def tau(self) -> float:
        cfg = self.config
        if cfg.tau_rule == "fixed":
            return float(cfg.tau_value)
        return math.inf if self.norm_ema is None else cfg.tau_mult * self.norm_ema

    @property
    def lambda_align(self) -> float:
        cfg = self.config
        if cfg.align_schedule == "constant":
            return float(cfg.lambda_align)
        c = 0.0 if self.cos_ema is None else self.cos_ema
        return float(cfg.lambda_align) * 2.0 / (1.0 + math.exp(-cfg.align_kappa * c))

    def set_ref_if_missing(self, task: torch.Tensor) -> torch.Tensor:
        if self.ref is None:
            self.ref = task.detach().clone()
        return self.ref

    def update(self, task: torch.Tensor, task_norm: float, cos_src: Optional[float]) -> None:
        beta = self.config.ema
        self.set_ref_if_missing(task)
        self.flat.average_(self.ref, task.detach(), beta)
        self.norm_ema = task_norm if self.norm_ema is None else beta * self.norm_ema + (1 - beta) * task_norm
        if cos_src is not None:
            self.cos_ema = cos_src if self.cos_ema is None else beta * self.cos_ema + (1 - beta) * cos_src
