"""The Python entry point: :func:`evaluate` methods on task episodes from a script or a notebook, as
``fewshot-bench run`` does from the shell, and compare two of them on the same episodes.

    import fewshot_bench as fb

    results = fb.evaluate(methods=["protonet", "linear_probe"], tasks=["demo_intents"], n_way=3, k_shot=1,
                          episodes=10)
    results.compare("linear_probe", "protonet")   # paired per cell: Δ accuracy, 95% CI, p, Holm
    results.frame()                               # one row per episode (pandas)
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..analysis.entries import load_entries
from ..analysis.pairs import pair_table
from ..core.config import from_mapping
from ..methods.spec import method_from_spec, method_label, parse_spec
from ..store.results import ResultsStore
from .run_config import RunConfig, method_specs, settings_of
from .runner import run


class Results:
    """The stored episodes of one :func:`evaluate` call (``rows``: one dict per episode, the store's columns) and
    the store they are in."""

    def __init__(self, store: Path, rows: List[dict], temporary: Optional[tempfile.TemporaryDirectory] = None):
        self.store, self.rows, self._temporary = store, rows, temporary

    def __len__(self) -> int:
        return len(self.rows)

    def accuracy(self) -> Dict[tuple, float]:
        """Mean query accuracy per (method, setting) over its ok and diverged episodes (a failed episode counts 0).
        A mean only: :meth:`compare` gives the paired difference with its interval."""
        sums: Dict[tuple, List[float]] = {}
        for row in self.rows:
            sums.setdefault((row["method"], row["setting"]), []).append(
                0.0 if row["status"] == "failed" else float(row["accuracy"] or 0.0))
        return {key: sum(values) / len(values) for key, values in sums.items()}

    def compare(self, method: str, other: str, bootstrap: int = 10000, seed: int = 0) -> List[dict]:
        """``method`` - ``other`` per cell on their common episodes: acc_a, acc_b, delta, its paired bootstrap 95%
        CI (low, high), the sign-flip p and p_holm (Holm over the cells compared), as ``fewshot-bench compare``."""
        return pair_table(load_entries(self.store, bootstrap=1, class_level=False), [(method, other)], bootstrap,
                          seed)

    def frame(self):
        """The rows as a pandas DataFrame (needs pandas)."""
        try:
            import pandas  # optional: only this view needs it
        except ImportError:
            raise ImportError("Results.frame() needs pandas: pip install pandas (Results.rows has the same "
                              "data as dicts)") from None
        return pandas.DataFrame(self.rows)


def evaluate(methods: Sequence[str], tasks: Sequence[str], *, n_way: Union[int, str] = 5, k_shot: int = 1,
             query: int = 15, episodes: int = 20, store: Union[str, Path, None] = None, **options) -> Results:
    """Run ``methods`` (method specs, as ``--methods``) on ``episodes`` episodes of each task and return the
    :class:`Results`. The same episodes, seeds and isolation as ``fewshot-bench run`` with these options;
    ``options`` are any other :class:`~fewshot_bench.execution.run_config.RunConfig` field (``fold``, ``seed``,
    ``backbone``, ``device``, ``source_task``, ``isolation``, ``method_config``, ``restarts``...). ``store``: a
    results store to write to and resume from (default: a temporary one, kept while the Results live). Bad
    values raise :class:`~fewshot_bench.core.errors.UserError` naming the option."""
    temporary = None
    if store is None:
        temporary = tempfile.TemporaryDirectory(prefix="fewshot-bench-")
        store = Path(temporary.name) / "results.sqlite"
    values = {"methods": list(methods), "tasks": list(tasks), "n_way": [n_way], "k_shot": [k_shot],
              "query": query, "episodes": episodes, "store": str(store), "out": "", **options}
    config = from_mapping(RunConfig, values, "evaluate()")
    path = Path(run(config))
    labels = {method_label(method_from_spec(parse_spec(spec)[0], overrides).name, overrides)
              for spec, overrides in method_specs(config).items()}
    settings = {setting.label for setting in settings_of(config)}
    with ResultsStore(path, create=False) as opened:
        rows = [row for row in opened.episodes(backbone=config.backbone)
                if row["method"] in labels and row["setting"] in settings and row["episode_index"] < config.episodes]
    return Results(path, rows, temporary)
