"""Task cards: a YAML file in ``tasks/`` maps 1:1 onto :class:`TaskConfig`."""
from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union


from ..core.checks import check_inside, check_name
from ..core.config import from_mapping, option, read_yaml, validate
from ..core.errors import UserError
from ..core.registry import TASKS

BUILTIN_TASKS_DIR = Path(str(importlib.resources.files("fewshot_bench.tasks")))
POOLS = ("source", "validation", "target")
PLACEHOLDER = "FILL IN"  # what `fewshot-bench new-task` writes where the user must decide a value


class _Checked:
    """Card sections validate their field types, limits and finite numbers at construction (also when built in
    Python, e.g. for ``register_task``)."""

    def __post_init__(self):
        validate(self, f"task card section {type(self).__name__}")


@dataclass
class SourceConfig(_Checked):
    local_dir: str = option(help="folder under the data dir holding the split files (<split>.jsonl|.csv|.parquet)")
    hub_id: Optional[str] = option(None, help="Hugging Face hub dataset id, used when no local copy exists and you are online")
    hub_config: Optional[str] = option(None, help="configuration name of the hub dataset")
    packaged: bool = option(False, help="the files ship inside the package (tasks/<local_dir>), no data dir needed")
    sha256: Optional[Dict[str, str]] = option(None, help="sha256 of files in local_dir the card was written for ({FILE: HEX}); a local copy that differs is refused")


@dataclass
class InputConfig(_Checked):
    text_field: str = option("text", help="field holding the input text")
    pair_field: Optional[str] = option(None, help="second text of a sentence-pair task (joined with the separator token)")
    head_field: Optional[str] = option(None, help="relation input: field naming the head entity (marked [E1] ... [/E1])")
    tail_field: Optional[str] = option(None, help="relation input: field naming the tail entity (marked [E2] ... [/E2])")
    tokens_field: Optional[str] = option(None, help="relation input: token list; with head/tail positions, entities are marked by position")
    head_pos_field: Optional[str] = option(None, help="relation input: field with the head entity's token positions")
    tail_pos_field: Optional[str] = option(None, help="relation input: field with the tail entity's token positions")


@dataclass
class PoolConfig(_Checked):
    strategy: str = option("classes", help="'classes': class-disjoint pools; 'examples': every pool has all classes, disjoint examples")
    class_splits_file: Optional[str] = option(None, help="JSON file in the data folder with source/validation/target classes (a 'folds' list or train/validation/test keys)")
    folds: int = option(1, help="number of folds in class_splits_file")
    source: Optional[List] = option(None, help="explicit source classes ('classes') or split files ('examples')")
    validation: Optional[List] = option(None, help="explicit validation classes ('classes') or split files ('examples')")
    target: Optional[List] = option(None, help="explicit target classes ('classes') or split files ('examples')")
    fractions: Optional[Dict[str, float]] = option(None, help="seeded split by fraction: {source: f, validation: f, target: f} of classes or examples")
    seed: int = option(0, help="seed of the fraction split")


@dataclass
class EpisodeDefaults(_Checked):
    n_way: Union[int, str] = option(5, help="classes per episode, or 'all'")
    k_shot: Union[int, List[int]] = option(5, help="support examples per class, or [min, max] for variable shot")
    q_query: int = option(15, help="query examples per class")


@dataclass
class TaskConfig(_Checked):
    name: str = option(help="registry name of the task")
    version: int = option(help="bump when the card changes episodes; part of every episode's identity")
    description: str = option(help="one paragraph: what the task is")
    citation: str = option(help="how to cite the dataset")
    license: str = option(help="the dataset's license as stated by its source")
    source: SourceConfig = option(help="where the data comes from")
    splits: List[str] = option(help="split files to read (e.g. [train, validation, test])")
    pools: PoolConfig = option(factory=PoolConfig, help="how classes/examples are divided into source/validation/target pools")
    input: InputConfig = option(factory=InputConfig, help="which fields reach the model")
    label_field: str = option("label", help="field holding the class label")
    exclude_labels: List = option(factory=list, help="label values that are not classes (rows dropped), e.g. CLINC150's 'oos'")
    episodes: EpisodeDefaults = option(factory=EpisodeDefaults, help="default episode settings")
    demo: bool = option(False, help="a demo task written by the project, not a research dataset")
    notes: str = option("", help="anything a user must know (e.g. how pools are formed)")
    prompt_template: str = option("Input: {text}\nLabel: {label}\n",
                                  help="in-context learning (method icl): how one example reads in a prompt, with "
                                       "{text} and then {label} (the class name, '_' read as a space)")


def load_card(path: Union[str, Path]) -> TaskConfig:
    """Parse and validate one YAML task card."""
    path = Path(path)
    data = read_yaml(path, "task card")
    if not isinstance(data, dict):
        raise UserError(f"task card {path}: expected a mapping of fields at the top level")
    _refuse_placeholders(data, path)
    config = from_mapping(TaskConfig, data, str(path))
    _check(config, path)
    return config


def _refuse_placeholders(data: dict, path, prefix: str = "") -> None:
    """A skeleton card (``fewshot-bench new-task``) is refused until every placeholder is replaced."""
    for key, value in data.items():
        if isinstance(value, dict):
            _refuse_placeholders(value, path, f"{prefix}{key}.")
        elif isinstance(value, str) and value.startswith(PLACEHOLDER):
            raise UserError(f"task card {path}: field '{prefix}{key}' still holds the skeleton placeholder "
                            f"'{value}'; replace it with a value")


def _check(config: TaskConfig, path) -> None:
    check_name(config.name, f"{path}: field 'name'")
    if not config.source.packaged:
        check_inside(config.source.local_dir, f"{path}: source.local_dir", "the data dir")
    for name, digest in (config.source.sha256 or {}).items():
        check_inside(name, f"{path}: source.sha256 key", "the task's data folder")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise UserError(f"{path}: source.sha256 of '{name}' is {digest!r}, not a sha256 (64 lower-case hex "
                            f"digits); pin the output of `sha256sum {name}`")
    if config.pools.class_splits_file is not None:
        check_inside(config.pools.class_splits_file, f"{path}: pools.class_splits_file", "the task's data folder")
    for split in config.splits:
        check_inside(split, f"{path}: splits entry", "the task's data folder")
    pools = config.pools
    if pools.strategy not in ("classes", "examples"):
        raise UserError(f"{path}: pools.strategy is '{pools.strategy}'; use 'classes' or 'examples'")
    if pools.fractions is not None:
        bad = set(pools.fractions) - set(POOLS)
        negative = {k: v for k, v in pools.fractions.items() if not 0 <= v <= 1}
        if bad or negative or abs(sum(pools.fractions.values()) - 1.0) > 1e-6:
            raise UserError(f"{path}: pools.fractions must have keys from {POOLS}, each in [0, 1], summing to 1, "
                            f"got {pools.fractions}")
    _check_explicit_pools(pools, path)
    explicit = any(getattr(pools, p) is not None for p in POOLS)
    given = sum([pools.class_splits_file is not None, pools.fractions is not None, explicit])
    if given != 1:
        raise UserError(f"{path}: pools needs exactly one of class_splits_file, fractions, or explicit source/validation/target lists")
    if pools.class_splits_file and pools.strategy != "classes":
        raise UserError(f"{path}: pools.class_splits_file needs strategy 'classes'")
    template = config.prompt_template
    if not (template.count("{text}") == template.count("{label}") == 1 and template.index("{text}") < template.index("{label}")):
        raise UserError(f"{path}: prompt_template {template!r} needs one {{text}} followed by one {{label}}")


def _check_explicit_pools(pools: PoolConfig, path) -> None:
    """Explicit pool lists: each a list of names without repeats, no name in two pools (the target pool must not
    hold source classes or split files)."""
    owner = {}
    for pool in POOLS:
        names = getattr(pools, pool)
        for item in names or ():
            if item is None or isinstance(item, (list, dict)):
                raise UserError(f"{path}: pools.{pool} holds {item!r}; list class names (or split names)")
            if str(item) in owner:
                where = "twice in pools." + pool if owner[str(item)] == pool else \
                    f"in both pools.{owner[str(item)]} and pools.{pool}"
                raise UserError(f"{path}: '{item}' is {where}; pools must not overlap, keep it in one")
            owner[str(item)] = pool


def register_cards(directory: Union[str, Path], *, overwrite: bool = False) -> List[str]:
    """Register every ``*.yaml`` card in ``directory``; returns the task names.

    Registering a card again with the same content is a no-op; another card under a taken name is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"tasks dir {directory} does not exist; pass a folder of *.yaml task cards")
    names = []
    for card_path in sorted(directory.glob("*.yaml")):
        config = load_card(card_path)
        same_card = config.name in TASKS and TASKS.get(config.name) == config
        TASKS.register(config.name, config, overwrite=overwrite or same_card)
        names.append(config.name)
    return names


def register_builtin_cards() -> None:
    register_cards(BUILTIN_TASKS_DIR, overwrite=True)


def _unknown_task_hint(name: str) -> str:
    """Where the card of an unregistered task may be: a --tasks-dir the user forgot."""
    found = sorted(str(p) for pattern in (f"{name}.yaml", f"*/{name}.yaml") for p in Path().glob(pattern))
    if found:
        return f"; a card {found[0]} exists: pass --tasks-dir {Path(found[0]).parent}"
    return "; is its card in a --tasks-dir you forgot? (--tasks-dir DIR registers every DIR/*.yaml)"


def get_task_config(name: str) -> TaskConfig:
    if name not in TASKS:
        try:
            TASKS.get(name)
        except UserError as exc:
            raise UserError(f"{exc}{_unknown_task_hint(name)}") from None
    obj = TASKS.get(name)
    if isinstance(obj, TaskConfig):
        return obj
    if isinstance(obj, (str, os.PathLike)) and str(obj).endswith((".yaml", ".yml")):
        return load_card(obj)
    if callable(obj):
        obj = obj()
    if not isinstance(obj, TaskConfig):
        raise UserError(f"task '{name}' is registered as {obj!r}, which is not a TaskConfig or a card path")
    return obj


register_builtin_cards()
