"""``fewshot-bench new-task NAME``: write a commented task-card skeleton listing every TaskConfig field.

Every field of :class:`fewshot_bench.data.cards.TaskConfig` (and its nested sections) is written with its help
text as a comment, set to its default, or to a ``FILL IN: ...`` placeholder where there is no default; a
card still holding a placeholder is refused when loaded. With a data dir whose ``<local_dir>/`` folder
exists, the split names and the fields of the first row are read from the files there and pre-filled.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import textwrap
import typing
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from .loading import FILE_FORMATS, data_dir
from ..core.errors import UserError
from .cards import PLACEHOLDER, TaskConfig
from .pinning import file_sha256

WIDTH = 110
# what the field help cannot say in one line: how a section's fields combine, where paths resolve
SECTION_NOTES = {
    "source": "local_dir is a folder under the data dir (--data-dir / $FEWSHOT_BENCH_DATA), not beside this card.",
    "pools": "Set exactly one of: class_splits_file, fractions, or the explicit source/validation/target lists. "
             "class_splits_file is read from the data folder (data dir / source.local_dir); its format is "
             '{"train": [classes], "validation": [classes], "test": [classes]} (train = source pool, test = '
             'target pool; source/validation/target keys work too; other keys are ignored), or '
             '{"folds": [{"source": [...], "validation": [...], "target": [...]}, ...]} with pools.folds = its length. '
             "strategy 'examples' (all classes in every pool, disjoint rows) takes split names in the explicit lists.",
    "episodes": "Defaults of `fewshot-bench episodes` and `check-task`; runs set their own with --n-way/--k-shot/--query.",
}


@dataclasses.dataclass
class FolderSummary:
    """What ``new-task`` found in the dataset folder: split names and the fields of the first row."""
    folder: Path
    splits: List[str]
    fields: List[str]
    first_file: Optional[str]
    json_files: List[str]


def inspect_folder(folder: Path) -> Optional[FolderSummary]:
    """Split files (``<split>.jsonl|.csv|.parquet``) of ``folder`` and the fields of the first one; None if absent."""
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in FILE_FORMATS)
    tables = [p for p in files if p.suffix != ".json"]
    fields = _fields_of(tables[0]) if tables else []
    return FolderSummary(folder, [p.stem for p in tables], fields, tables[0].name if tables else None,
                         [p.name for p in files if p.suffix == ".json"])


def _fields_of(path: Path) -> List[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix == ".csv":
            return next(csv.reader(handle), [])
        first = handle.readline()
    try:
        row = json.loads(first)
    except ValueError:
        raise UserError(f"{path}:1: not a JSON object per line (JSON Lines); fix the file or convert it") from None
    return list(row) if isinstance(row, dict) else []


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _comment(text: str, indent: str) -> List[str]:
    return textwrap.wrap(text, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _lines(cls, prefill: Dict[str, object], indent: str = "", prefix: str = "") -> List[str]:
    """Commented ``key: value`` lines for every field of dataclass ``cls`` (nested sections indented)."""
    hints = typing.get_type_hints(cls)
    out: List[str] = []
    for spec in dataclasses.fields(cls):
        dotted = prefix + spec.name
        out += _comment(spec.metadata.get("help", ""), indent)
        nested = hints[spec.name] if dataclasses.is_dataclass(hints[spec.name]) else None
        if nested is not None:
            if dotted in SECTION_NOTES:
                out += _comment(SECTION_NOTES[dotted], indent)
            out.append(f"{indent}{spec.name}:")
            out += _lines(nested, prefill, indent + "  ", dotted + ".")
            continue
        if dotted in prefill:
            value = prefill[dotted]
        elif spec.default is not dataclasses.MISSING:
            value = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        else:
            value = f"{PLACEHOLDER}: {spec.metadata.get('help', spec.name)}"
        out.append(f"{indent}{spec.name}: {_yaml_value(value)}")
    return out


def skeleton(name: str, local_dir: str, found: Optional[FolderSummary]) -> str:
    """The card text: header, what was found in the data folder, then every field."""
    prefill: Dict[str, object] = {"name": name, "version": 1, "source.local_dir": local_dir}
    header = [f"# Task card skeleton for '{name}' written by `fewshot-bench new-task` (fields of "
              f"fewshot_bench.data.cards.TaskConfig).",
              f"# Replace every '{PLACEHOLDER}' value (the card is refused until then), choose the pools, then check it:",
              f"#   fewshot-bench check-task {name} --tasks-dir DIR   (DIR: the folder holding this file;",
              "#   any command registers the cards of DIR with --tasks-dir DIR)"]
    if found is None:
        header.append(f"# No folder '{local_dir}' under the data dir ({data_dir() or 'not set'}): fill in splits and fields.")
    else:
        header.append(f"# Found in {found.folder}: split files {', '.join(found.splits) or 'none'}"
                      + (f"; other JSON files: {', '.join(found.json_files)}" if found.json_files else ""))
        if found.fields:
            header.append(f"# Fields of the first row of {found.first_file}: {', '.join(found.fields)}")
        if found.splits:
            prefill["splits"] = found.splits
            prefill["source.sha256"] = {path.name: file_sha256(path) for split in found.splits
                                        for path in sorted(found.folder.glob(f"{split}.*")) if path.is_file()}
        for dotted, usual in (("input.text_field", "text"), ("label_field", "label")):
            if found.fields and usual not in found.fields:
                prefill[dotted] = f"{PLACEHOLDER}: one of {', '.join(found.fields)}"
    return "\n".join(header + [""] + _lines(TaskConfig, prefill)) + "\n"
