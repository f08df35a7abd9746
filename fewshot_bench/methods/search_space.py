"""Search-space declarations a method puts next to its config (``Method.search_space``), read by ``tune``.

A :class:`SearchSpace` maps config fields to :class:`Choice` or :class:`Range`
and names the fields whose product is the config's cost (``cost``: the tie-break, cheaper wins). It only
describes the space; :mod:`fewshot_bench.execution.tuning` samples it with Optuna (``suggest`` takes an
``optuna.Trial``), so declaring a space needs no Optuna install. A method whose ``search_space`` is
None runs its defaults and is reported as untuned.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..core.errors import UserError


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (bool, int, float, str or None)."""
    values: Tuple[Any, ...]

    def __post_init__(self):
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))

    def grid(self) -> Optional[list]:
        return list(self.values)


@dataclass(frozen=True)
class Range:
    """A number in [low, high]: an int when ``integer``, sampled on a log scale when ``log``."""
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Range needs low < high (and low > 0 on a log scale), got {self.low}, {self.high}")

    def suggest(self, trial, name: str):
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def grid(self) -> Optional[list]:
        return list(range(int(self.low), int(self.high) + 1)) if self.integer else None


@dataclass(frozen=True)
class SearchSpace:
    """{config field: Choice | Range}, and the fields whose product is a config's cost."""
    fields: Mapping[str, Any]
    cost: Tuple[str, ...] = ()

    def check(self, config_class, method: str) -> None:
        """Every field and cost field names a field of ``config_class`` (a programming error otherwise)."""
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted((set(self.fields) | set(self.cost)) - known)
        if unknown:
            raise UserError(f"{method}: search space names config field(s) {', '.join(unknown)} that "
                            f"{config_class.__name__} does not have")

    def suggest(self, trial) -> Dict[str, Any]:
        """The config overrides of one Optuna trial."""
        return {name: spec.suggest(trial, name) for name, spec in self.fields.items()}

    def grid(self) -> Optional[Dict[str, list]]:
        """{field: values} for Optuna's GridSampler, or None when a field is a float range."""
        grid = {name: spec.grid() for name, spec in self.fields.items()}
        return None if any(values is None for values in grid.values()) else grid

    def cost_of(self, config: Dict[str, Any]) -> float:
        """Product of the cost fields' values in ``config`` (a config as a dict, e.g. ``Method.config_dict()``;
        1.0 without cost fields); bools count as 1 / 2."""
        return math.prod(float(config[name]) + (1.0 if isinstance(config[name], bool) else 0.0) for name in self.cost)

    def without(self, *names: str) -> "SearchSpace":
        """The same space with ``names`` left out (an ablation that pins those fields)."""
        return SearchSpace({k: v for k, v in self.fields.items() if k not in names},
                           tuple(c for c in self.cost if c not in names))
