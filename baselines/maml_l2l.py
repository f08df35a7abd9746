"""The ``maml`` baseline's episode written with learn2learn's ``MAML`` (an optional cross-check, not a method).

learn2learn is never a dependency: :func:`learn2learn_maml_class` returns ``learn2learn.algorithms.maml.MAML``
or raises ``ImportError``. It loads that module without running ``learn2learn/__init__.py``, which imports
the library's dataset and environment packages (torchvision, gym) that MAML itself does not use.

:class:`Learn2LearnEpisode` computes the same quantity as ``MAML.meta_gradient`` for one episode and one
config: the query loss after ``inner_steps`` SGD steps (``inner_lr``) of the adapted backbone parameters and
the episode head, the head initialised from the support embeddings of the un-adapted model (``head_init``).
The backbone runs in eval mode. Each inner gradient is the partial derivative of the support loss with the
head held fixed: the head comes from a separate forward of the meta model, so learn2learn's ``adapt``
(gradients w.r.t. the clone's parameters) does not see it, and the head's own step uses
``torch.autograd.grad`` on the same loss. Covered: fixed inner learning rates, and configs whose adapted
parameters are the meta-learned ones (``adapt_params = all``, or ``meta_params = adapted``), because
learn2learn adapts every parameter that requires grad.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import Sequence

import torch
import torch.nn.functional as F

from fewshot_bench.methods.backbone import Backbone, Batch
from fewshot_bench.methods.architecture import adapted_names
from fewshot_bench.baselines.maml import MAMLConfig
from fewshot_bench.baselines.maml_inner import init_head


def learn2learn_maml_class():
    """``learn2learn.algorithms.maml.MAML``, imported without the package's dataset modules (ImportError if absent)."""
    if "learn2learn.algorithms.maml" not in sys.modules:
        spec = importlib.util.find_spec("learn2learn")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("learn2learn is not installed")
        for name, path in (("learn2learn", list(spec.submodule_search_locations)),
                           ("learn2learn.algorithms", [p + "/algorithms" for p in spec.submodule_search_locations])):
            if name not in sys.modules:  # namespace-like stand-ins, so only the submodules MAML needs are executed
                package = types.ModuleType(name)
                package.__path__ = path
                sys.modules[name] = package
    from learn2learn.algorithms.maml import MAML as L2LMAML

    return L2LMAML


class Learn2LearnEpisode:
    """MAML / FOMAML on one backbone copy through ``learn2learn.algorithms.MAML`` (see the module docstring)."""

    def __init__(self, backbone: Backbone, model: torch.nn.Module, cfg: MAMLConfig, first_order: bool):
        names = [n for n, _ in model.named_parameters()]
        adapt = adapted_names(names, cfg.adapt_params, cfg.top_k)
        meta = adapted_names(names, "all", 0) if cfg.meta_params == "all" else adapt
        if cfg.learn_inner_lr or set(meta) != set(adapt):
            raise ValueError("the learn2learn cross-check covers fixed inner learning rates and configs whose "
                             "adapted parameters are the meta-learned ones (adapt_params=all, or meta_params=adapted)")
        self.backbone, self.cfg, self.meta_names = backbone, cfg, adapt
        for name, p in model.named_parameters():
            p.requires_grad_(name in adapt)  # learn2learn adapts exactly the parameters that require grad
        self.maml = learn2learn_maml_class()(model.eval(), lr=cfg.inner_lr, first_order=first_order,
                                             allow_unused=True, allow_nograd=True)

    def meta_parameters(self) -> Sequence[torch.nn.Parameter]:
        return [self.maml.module.get_parameter(n) for n in self.meta_names]

    def _embed(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        e = self.backbone.embed(model, batch)  # as in maml: float32 unless the model computes in float64
        return e if e.dtype in (torch.float32, torch.float64) else e.float()

    def episode_loss(self, support: Batch, query: Batch, n_way: int, steps: int) -> torch.Tensor:
        """Query loss after ``steps`` inner steps; differentiable w.r.t. :meth:`meta_parameters`."""
        learner = self.maml.clone()
        weight, bias = init_head(self._embed(self.maml.module, support), support.labels, n_way, self.cfg.head_init)
        lr = self.cfg.inner_lr
        for _ in range(steps):
            loss = F.cross_entropy(self._embed(learner, support) @ weight.T + bias, support.labels)
            g_w, g_b = torch.autograd.grad(loss, [weight, bias], retain_graph=True,
                                           create_graph=not self.maml.first_order)
            learner.adapt(loss)
            weight, bias = weight - lr * g_w, bias - lr * g_b
        return F.cross_entropy(self._embed(learner, query) @ weight.T + bias, query.labels)
