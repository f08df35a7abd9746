"""fewshot-bench: episodic few-shot NLU benchmark."""
import os as _os

# The wheel installs tasks/ and baselines/ as fewshot_bench.tasks / fewshot_bench.baselines. In a source
# checkout (e.g. `python -m fewshot_bench` run from the repository root) they sit beside the package.
_here, _root = _os.path.dirname(__file__), _os.path.dirname(_os.path.dirname(__file__))
if not _os.path.isdir(_os.path.join(_here, "tasks")) and _os.path.isfile(_os.path.join(_root, "tasks", "__init__.py")):
    __path__.append(_root)

from .episodes import Episode, Setting, sample_episode
from .errors import UserError
from .registry import BACKBONES, METHODS, TASKS, register_backbone, register_method, register_task
from .task import TaskConfig, load_card, register_cards

__version__ = "0.1.0"
__all__ = ["Episode", "Setting", "sample_episode", "UserError", "TASKS", "METHODS", "BACKBONES",
           "register_task", "register_method", "register_backbone", "TaskConfig", "load_card", "register_cards"]
