"""fewshot-bench: episodic few-shot NLU benchmark."""
from .core.builtins import register_builtins
from .episodes.sampling import Episode, Setting, sample_episode
from .core.errors import UserError
from .core.registry import BACKBONES, METHODS, TASKS, register_backbone, register_method, register_task
from .data.cards import TaskConfig, load_card, register_cards

register_builtins()

__version__ = "0.1.0"


def __getattr__(name: str):
    """``fewshot_bench.evaluate`` and ``fewshot_bench.Results`` (:mod:`fewshot_bench.execution.api`), loaded on first
    use: they bring torch, which ``import fewshot_bench`` and the commands that train nothing do without."""
    if name in ("evaluate", "Results"):
        from .execution import api

        return getattr(api, name)
    raise AttributeError(f"module 'fewshot_bench' has no attribute {name!r}")
__all__ = ["evaluate", "Results", "Episode", "Setting", "sample_episode", "UserError", "TASKS", "METHODS", "BACKBONES",
           "register_task", "register_method", "register_backbone", "TaskConfig", "load_card", "register_cards"]
