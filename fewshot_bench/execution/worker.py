"""The sealed worker: a submitted method's code runs in a separate process that holds no query label.

:class:`SealedWorker` starts a process (``multiprocessing`` spawn) and reuses it across the episodes of a run; it
hosts several method instances (the package's own methods share one process; each submitted method file gets its
own, so one method cannot reach another's state) and restarts after a crash, a kill or a timeout. The harness sends
it only what a method may see: the method spec (built there with :func:`fewshot_bench.methods.spec.method_from_spec`;
:meth:`SealedWorker.describe` gives the harness a :class:`MethodStub` without importing a method file here), the
backbone name, device, autocast dtype and threads, meta-trained state tensors, and per episode the label-free
:class:`~fewshot_bench.episodes.sealed.EpisodeView` and the training seed. The worker runs
:func:`fewshot_bench.execution.harness.episode_outcome` (adapt, predict the query texts in length buckets, the un-adapted
model's logits for ``Predictor.initial``) and answers with logits, figures and the gradient recorder's summary;
:func:`fewshot_bench.execution.harness.record_from_outcome` checks and scores them in the harness. Source- and validation-pool
episodes (SGG's alignment, meta-training) are served by the harness on request; the worker never opens the data.

After loading the backbone the worker confines itself (:mod:`fewshot_bench.execution.worker_process`): level ``sandboxed``
(Landlock: no reading of the data, the store or the caches, writing only in a scratch folder), else ``process``
(separate memory only: the query labels are out of reach, files are not). A per-episode time limit kills the
worker's process group; a worker that dies fails only its episode; a memory cap turns runaway allocation into a
MemoryError. Meta-training runs in the worker too; its state comes back for the runner's cache.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import weakref
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from huggingface_hub.constants import HF_HUB_CACHE

from ..episodes.sampling import Episode
from ..core.errors import UserError
from ..data.cards import get_task_config
from ..methods.spec import check_declarations, parse_spec
from ..methods.api import Method
from ..episodes.sealed import EpisodeView
from ..store.schema import Figure
from .worker_methods import MethodStub, canonical_spec, grants_for, method_spec
from .worker_process import default_denied, default_memory_limit_mb, exit_description, pack, unpack, worker_main

log = logging.getLogger(__name__)

ISOLATIONS = ("sandboxed", "process", "in-process")
MAX_EPISODE_INDEX = 2**31
START_SECONDS = 600.0  # loading torch and the backbone on a busy machine


class WorkerFailure(Exception):
    """The worker timed out, died or broke the protocol; the message is the episode's stored error."""


def _card(task: str):
    """The task's card (its prompt template, for in-context learning: a card of --tasks-dir is registered here only),
    or None."""
    try:
        return get_task_config(task) if task else None
    except UserError:
        return None


def _weights_path(name: str) -> Optional[str]:
    """The folder a backbone's weights are read from (granted to the worker), when not a built-in."""
    if os.path.isdir(name):
        return os.path.abspath(name)
    if "/" in name:
        return os.path.join(HF_HUB_CACHE, "models--" + name.replace("/", "--"))
    return None


class _Process:
    """One worker process: spawned, confined, asked, killed."""

    def __init__(self, init: dict):
        self.init = init
        self.process = self.conn = self.scratch = None
        self.hosted: set = set()  # tokens of the methods it holds
        self.isolation: Optional[str] = None
        self.note: Optional[str] = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self.kill()  # a process that died between calls: its pipe and scratch folder
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe(duplex=True)
        self.scratch = tempfile.mkdtemp(prefix="fewshot_worker_")
        self.process = context.Process(target=worker_main, args=(child, {**self.init, "scratch": self.scratch}),
                                       daemon=True, name="fewshot-sealed-worker")
        self.process.start()
        child.close()
        self.hosted = set()
        try:
            reply = self.call(None, START_SECONDS, {}, what="start")
        except WorkerFailure as exc:
            raise UserError(f"the sealed worker did not start: {exc}") from None
        if reply[0] != "ready":
            self.kill()
            raise UserError(f"the sealed worker did not start: {reply[1] if len(reply) > 1 else reply}")
        self.isolation, self.note = reply[1], reply[2]
        if self.init["isolation"] == "sandboxed" and self.isolation != "sandboxed":
            log.warning("sealed worker not sandboxed (%s): isolation level 'process'", self.note)

    def close(self) -> None:
        if self.alive:
            try:
                self.conn.send_bytes(pack(("quit",)))
                self.process.join(1)
            except (OSError, ValueError):
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the worker's process group (it is its own session: its children go too)."""
        process, self.process = self.process, None
        if process is not None and process.pid:
            for kill in (lambda: os.killpg(process.pid, signal.SIGKILL), lambda: os.kill(process.pid, signal.SIGKILL)):
                try:
                    kill()
                except OSError:
                    pass
            process.join(10)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        self.hosted = set()

    def call(self, message, seconds: float, sources: Dict[str, Optional[Callable[[int], Episode]]], *,
             what: str = "episode"):
        """Send ``message`` (None: only wait), serve the worker's source-pool requests, return its answer; past
        ``seconds`` (0: never) the worker is killed and WorkerFailure says so, as when it dies."""
        deadline = time.monotonic() + seconds if seconds else None
        try:
            if message is not None:
                self.conn.send_bytes(pack(message))
            while True:
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    raise WorkerFailure(f"timeout: the {what} exceeded {seconds:g} s")
                if not self.conn.poll(wait):
                    if not self.process.is_alive():
                        raise EOFError
                    continue
                reply = unpack(self.conn.recv_bytes(), trusted=False)
                if not isinstance(reply, tuple) or not reply or not isinstance(reply[0], str):
                    raise WorkerFailure("the sealed worker broke the protocol (an answer that is not a message)")
                if reply[0] != "pool":
                    return reply
                self.conn.send_bytes(pack(_serve(reply, sources)))
        except (EOFError, OSError):
            process = self.process
            if process is not None:
                process.join(5)
            code = process.exitcode if process is not None else None
            self.kill()
            raise WorkerFailure(exit_description(code)) from None
        except BaseException:  # a timeout, Ctrl-C, an answer that does not unpickle: the worker's state is unknown
            self.kill()
            raise


def _serve(request, sources) -> tuple:
    """The harness's answer to the worker's ("pool", name, index): that source- or validation-pool episode."""
    pool, index = (request[1], request[2]) if len(request) == 3 else (None, None)
    source = sources.get(pool) if isinstance(pool, str) else None
    if source is None:
        return ("error", f"this setting has no {pool} pool to draw from")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_EPISODE_INDEX:
        return ("error", f"{pool} episode index {index!r} is not an integer in [0, {MAX_EPISODE_INDEX})")
    return ("episode", source(index))


class SealedWorker:
    """Sealed worker processes running methods' code (see the module docstring): the package's own methods share
    one process; every other method file or module gets its own (a submitted method cannot reach another's
    state), started on first use and restarted after a failure.

    ``isolation``: ``sandboxed`` (Landlock when available, else falls back to ``process``) or ``process``.
    ``timeout``: seconds per episode (0: no limit); ``meta_timeout``: seconds per meta-training (0: no limit).
    ``memory_limit_mb``: cap on each worker's private memory (None: 75% of physical memory; 0: none).
    ``deny``: more paths a worker may not read (the results store, ...).
    """

    def __init__(self, backbone: str = "minilm", *, device: str = "cpu", threads: Optional[int] = None,
                 isolation: str = "sandboxed", timeout: float = 0.0, meta_timeout: float = 0.0,
                 memory_limit_mb: Optional[int] = None, deny: Sequence[str] = (),
                 attn_implementations: Sequence[str] = ("sdpa",)):
        if isolation not in ISOLATIONS[:2]:
            raise UserError(f"isolation {isolation!r}: a sealed worker is 'sandboxed' or 'process' (in-process "
                            f"runs without a worker)")
        if timeout < 0 or meta_timeout < 0:
            raise UserError("a worker time limit is a number of seconds >= 0 (0: no limit)")
        self.backbone, self.device, self.requested = backbone, device, isolation
        self.timeout, self.meta_timeout = float(timeout), float(meta_timeout)
        self.init = {"backbone": backbone, "device": device, "threads": threads or torch.get_num_threads(),
                     "attn": sorted(set(attn_implementations)), "isolation": isolation,
                     "memory_limit_mb": default_memory_limit_mb() if memory_limit_mb is None else int(memory_limit_mb),
                     "deny": [*default_denied(), *(str(p) for p in deny)],
                     "read": [w] if (w := _weights_path(backbone)) else []}
        self._slots: Dict[str, _Process] = {}
        self._tokens: Dict[int, int] = {}  # id(method instance) -> token
        self._pinned: list = []
        self._count = 0
        self._states: Dict[int, Optional[dict]] = {}  # token -> state tensors (meta-trained or loaded)
        self._replay: Dict[int, tuple] = {}  # token -> meta-training arguments (methods without a state_dict)

    @property
    def isolation(self) -> Optional[str]:
        """The weakest isolation level a started worker reached (None before any started)."""
        levels = [p.isolation for p in self._slots.values() if p.isolation]
        return None if not levels else "process" if "process" in levels else "sandboxed"

    def start(self, spec: str = "fewshot_bench.baselines.protonet:PrototypicalNetwork") -> str:
        """Start the worker process ``spec`` runs in (the package's methods': by default); its isolation level."""
        slot = self._slot(canonical_spec(spec))
        slot.start()
        return slot.isolation

    def close(self) -> None:
        for slot in self._slots.values():
            slot.close()

    def __enter__(self) -> "SealedWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            for slot in self._slots.values():
                slot.kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _slot(self, spec: str) -> _Process:
        """The process ``spec`` (canonical: ``module:Class`` or ``/path/file.py:Class``) runs in."""
        key = "fewshot_bench" if spec.startswith("fewshot_bench.") else spec.rpartition(":")[0]
        if key not in self._slots:
            self._slots[key] = _Process({**self.init, "read": [*self.init["read"], *grants_for(spec)]})
        return self._slots[key]

    def describe(self, spec: str, overrides: Optional[dict] = None) -> MethodStub:
        """The method ``spec`` (``NAME(field=value,...)`` as ``--methods`` takes it) with config ``overrides``, built
        and checked in its worker (a method file is imported there, never in this process): a
        :class:`MethodStub` to give :func:`~fewshot_bench.execution.harness.run_episode` and :meth:`meta_train`. Raises
        UserError with the worker's reason when the method cannot be built."""
        name, from_spec = parse_spec(spec)
        target = canonical_spec(name)
        slot = self._slot(target)
        slot.start()
        try:
            reply = slot.call(("describe", target, {**from_spec, **(overrides or {})}), self.timeout, {})
        except WorkerFailure as exc:
            raise UserError(f"method '{spec}': {exc}") from None
        info = reply[1] if reply[0] == "described" and len(reply) > 1 else None
        if not isinstance(info, dict):
            raise UserError(str(reply[1]) if reply[0] == "error" and len(reply) > 1 else f"method '{spec}': the "
                            f"sealed worker broke the protocol")
        fields = {f.name for f in dataclasses.fields(Figure)}
        if not (isinstance(info.get("name"), str) and isinstance(info.get("config"), dict)
                and isinstance(info.get("figures"), list)
                and all(isinstance(f, dict) and set(f) == fields for f in info["figures"])):
            raise UserError(f"method '{spec}': the sealed worker described it wrongly")
        return check_declarations(MethodStub(target, info))

    def _token(self, method: Method) -> int:
        """A number per method instance (its worker copy, its state), forgotten when the instance is."""
        key = id(method)
        if key not in self._tokens:
            self._count += 1
            self._tokens[key] = self._count
            try:
                weakref.finalize(method, self._forget, key)
            except TypeError:  # not weak-referenceable: kept alive, so its id is never another instance's
                self._pinned.append(method)
        return self._tokens[key]

    def _forget(self, key: int) -> None:
        token = self._tokens.pop(key, None)
        self._states.pop(token, None)
        self._replay.pop(token, None)

    def _host(self, method: Method, seconds: float, replay: bool = True) -> Tuple[_Process, int]:
        """The worker process of ``method``, started, holding it (built from its spec, with its state or replayed
        meta-training)."""
        spec, overrides = method_spec(method)
        slot = self._slot(spec)
        slot.start()
        token = self._token(method)
        if token in slot.hosted:
            return slot, token
        state = self._states.get(token)
        if state is None and token not in self._replay and method.protocol == "meta-trained":
            state = method.state_dict()  # meta-trained in this process (not through the worker)
            if state is None:
                raise WorkerFailure("the meta-trained method has no state in the sealed worker: meta-train it with "
                                    "SealedWorker.meta_train (or load its cached state with load_state)")
        reply = slot.call(("host", token, spec, overrides, method.attn_implementation, state), seconds, {})
        if reply[0] != "ok":
            raise WorkerFailure(str(reply[1]) if len(reply) > 1 else "the worker could not build the method")
        slot.hosted.add(token)
        if replay and token in self._replay and token not in self._states:
            seed, autocast, sources = self._replay[token]
            log.info("%s: meta-training again in a restarted sealed worker", method.name)
            self._meta(slot, token, seed, autocast, sources)
        return slot, token

    def _meta(self, slot: _Process, token, seed, autocast, sources) -> Optional[dict]:
        reply = slot.call(("meta_train", token, seed, autocast, sources.get("validation") is not None),
                          self.meta_timeout, sources, what="meta-training")
        if reply[0] != "state":
            raise WorkerFailure(str(reply[1]) if len(reply) > 1 else "meta-training failed in the worker")
        state = reply[1]
        if state is not None and (not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
            raise WorkerFailure("TypeError: the method's state_dict() is not a dict of named tensors")
        return state

    # ------------------------------------------------------------------ the harness's calls
    def episode(self, method: Method, view: EpisodeView, *, seed: int, autocast_dtype=None,
                source_episodes: Optional[Callable[[int], Episode]] = None) -> dict:
        """The method's :func:`~fewshot_bench.execution.harness.episode_outcome` on ``view``, run in its worker (untrusted:
        :func:`~fewshot_bench.execution.harness.record_from_outcome` checks it), plus ``seconds`` (wall time of the episode,
        from the call, not counting a worker start), ``isolation``, ``peak_mem_mb``, ``embedding_cache_seconds``.
        A timeout, the worker's death or a method the worker cannot build gives an outcome with that ``error``."""
        started, slot = time.perf_counter(), None
        try:
            slot, token = self._host(method, self.timeout)
            started = time.perf_counter()
            reply = slot.call(("episode", token, view, seed, autocast_dtype, source_episodes is not None,
                               _card(view.task)), self.timeout, {"source": source_episodes})
            outcome = reply[1] if reply[0] == "outcome" and len(reply) > 1 and isinstance(reply[1], dict) else None
            if outcome is None:
                raise WorkerFailure(str(reply[1]) if reply[0] == "error" and len(reply) > 1
                                    else "the sealed worker broke the protocol (no outcome)")
        except WorkerFailure as exc:
            outcome = {"error": str(exc)}
        except UserError as exc:
            outcome = {"error": f"UserError: {exc}"}
        isolation = (slot.isolation if slot is not None else None) or self.requested
        outcome.update(seconds=time.perf_counter() - started, isolation=isolation)
        return outcome

    def meta_train(self, method: Method, *, seed: int, source_episodes: Callable[[int], Episode],
                   validation_episodes: Optional[Callable[[int], Episode]] = None,
                   autocast_dtype=None) -> Optional[Dict[str, torch.Tensor]]:
        """Run ``method.meta_train`` in its worker (source- and validation-pool episodes served from here) and return
        its ``state_dict()`` (CPU tensors, for the runner's cache; kept here to host the method again after a
        restart). Raises RuntimeError with the reason when meta-training fails, times out or kills the worker."""
        sources = {"source": source_episodes, "validation": validation_episodes}
        token = self._token(method)
        self._states.pop(token, None)
        self._replay[token] = (seed, autocast_dtype, sources)  # hosting must not ask the method for a state
        try:
            slot, _ = self._host(method, 0.0, replay=False)
            state = self._meta(slot, token, seed, autocast_dtype, sources)
        except (WorkerFailure, UserError) as exc:
            raise RuntimeError(f"meta_train failed in the sealed worker: {exc}") from None
        if state is not None:
            self._states[token] = state
            self._replay.pop(token)
        return state

    def load_state(self, method: Method, state: Dict[str, torch.Tensor]) -> None:
        """Give ``method`` a meta-trained state (e.g. from the runner's cache) for its episodes in the worker."""
        token = self._token(method)
        self._states[token] = {k: v.detach().cpu() for k, v in state.items()}
        self._replay.pop(token, None)
        for slot in self._slots.values():
            slot.hosted.discard(token)
