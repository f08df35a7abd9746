"""fewshot-bench: episodic few-shot NLU benchmark."""
from .core.builtins import register_builtins
from .episodes.sampling import Episode, Setting, sample_episode
from .core.errors import UserError
from .core.registry import BACKBONES, METHODS, TASKS, register_backbone, register_method, register_task
from .data.cards import TaskConfig, load_card, register_cards

register_builtins()

__version__ = "0.1.0"
__all__ = ["Episode", "Setting", "sample_episode", "UserError", "TASKS", "METHODS", "BACKBONES",
           "register_task", "register_method", "register_backbone", "TaskConfig", "load_card", "register_cards"]
