"""The sealed worker's process (:mod:`fewshot_bench.execution.worker` starts it): what it does to itself before it runs a
method (Landlock confinement, a memory cap, no capabilities), its main loop, and the wire format.

Confinement (``landlockpy``, the optional extra ``sandbox``): reads only beneath the Python installation, the
system folders, the folders of the modules imported so far (this package, torch, transformers, ...), the backbone
weights and the method files; never the data dir, the task data shipped in the package, the caches, the results
store or any other path the harness names; writes only in its scratch folder (and to devices such as /dev/null);
no TCP; no signals to, nor abstract UNIX sockets of, processes outside the sandbox (Landlock also denies ptrace and
``/proc/PID/mem`` of the harness). When the package is missing or the kernel refuses, :func:`confine` says why and
the worker runs at isolation level ``process``.

Wire format: the harness sends pickles (it is trusted); the worker's answers are read with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and dicts only, so a method cannot
make the harness run code by what it sends back.
"""
from __future__ import annotations

import ctypes
import dataclasses
import importlib
import io
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..episodes.sampling import Episode
from ..core.errors import UserError
from ..core.registry import register_task
from ..data.cards import BUILTIN_TASKS_DIR
from ..methods.api import MetaContext
from ..methods.backbone import load_backbone
from ..methods.spec import method_from_spec
from .harness import episode_outcome, failure_reason, peak_memory_mb

SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys")


def pack(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def unpack(data: bytes, *, trusted: bool):
    """``trusted``: from the harness (any pickle); else from the worker (tensors and plain data only)."""
    return torch.load(io.BytesIO(data), weights_only=not trusted, map_location="cpu")


def exit_description(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "the sealed worker stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = " (the OOM killer or a kill from outside)" if name == "SIGKILL" else ""
        return f"the sealed worker died from {name}{cause}"
    return f"the sealed worker exited with status {exitcode} (os._exit or an exit in the method's code)"


def default_memory_limit_mb() -> int:
    """75% of physical memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75 / 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def cap_memory(limit_mb: int) -> None:
    """Cap the process's private writable memory (RLIMIT_DATA: malloc, anonymous mmap; not CUDA's address space
    reservations): a runaway allocation raises MemoryError (or torch's allocation RuntimeError) instead of
    taking the machine. No core dumps."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limit_mb and limit_mb > 0:
        limit = int(limit_mb) * 2**20
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def die_with_parent() -> None:
    """SIGKILL this process when the harness process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def drop_capabilities() -> None:
    """No capabilities (a worker started as root keeps its uid, loses CAP_SYS_MODULE, CAP_DAC_OVERRIDE, ...)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in range(64):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; fails past the last capability
                break
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: none
        libc.capset(header, data)
    except (OSError, AttributeError):
        pass


def _real(path) -> Optional[Path]:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return None


def module_roots() -> List[Path]:
    """Where the modules imported so far came from: a package's folder, a plain module's file."""
    roots = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = _real(file)
        if path is not None:
            roots.add(path.parent if path.name.startswith("__init__.") else path)
    return sorted(roots)


def collapse(paths: Iterable[Path]) -> List[Path]:
    """``paths`` without those beneath another one."""
    kept: List[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return kept


def packaged_data_dirs() -> List[Path]:
    """The folders of the package's task directory other than its suites: the task data shipped in the package."""
    base = Path(BUILTIN_TASKS_DIR)
    if not base.is_dir():
        return []
    return [p for p in base.iterdir() if p.is_dir() and p.name not in ("suites", "__pycache__")]


def default_denied() -> List[str]:
    """Paths the worker must never read, whatever the allowed folders hold: the data dir, the caches, the packaged
    task data."""
    home = Path.home()
    paths = [os.environ.get(name) for name in ("FEWSHOT_BENCH_DATA", "FEWSHOT_BENCH_CACHE", "HF_HOME",
                                                "HF_DATASETS_CACHE")]
    paths += [str(home / ".cache" / "fewshot_bench"), str(home / ".cache" / "huggingface")]
    return [p for p in paths if p] + [str(p) for p in packaged_data_dirs()]


def confine(*, read: Sequence[str], write: Sequence[str], deny: Sequence[str]) -> Optional[str]:
    """Restrict this thread and its future children with Landlock (see the module docstring): reads beneath
    :data:`SYSTEM_READ`, the Python installation and :func:`module_roots`, except beneath ``deny``; beneath the paths
    ``read`` names (the backbone weights, method files), even inside a denied folder; read-write beneath ``write``
    and on devices. Returns None when enforced, else why not (nothing restricted)."""
    try:
        import landlockpy as landlock
    except ImportError:
        return "landlockpy is not installed (pip install 'fewshot-bench[sandbox]')"
    try:
        abi = landlock.abi_version()
        if abi < 1:
            return "the kernel has no Landlock"
        fs = landlock.AccessFS
        handled = landlock.fs_for_abi(abi)
        reading = (fs.READ_FILE | fs.READ_DIR | fs.EXECUTE) & handled
        writing = handled & ~(fs.EXECUTE | fs.IOCTL_DEV | fs.MAKE_CHAR | fs.MAKE_BLOCK)
        ruleset = landlock.Ruleset(handled_fs=handled, handled_net=landlock.net_for_abi(abi),
                                   scoped=landlock.Scope.ABSTRACT_UNIX_SOCKET | landlock.Scope.SIGNAL)
        denied = [p for p in (_real(d) for d in deny) if p is not None]
        roots = [*SYSTEM_READ, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *module_roots()]
        with ruleset:
            for root in collapse(p for p in (_real(r) for r in roots) if p is not None and p.exists()):
                _allow_except(ruleset, root, reading, denied)
            for path in (p for p in (_real(r) for r in read) if p is not None and p.exists()):  # named: granted
                ruleset.allow_path(path, reading if path.is_dir() else reading & _FILE_RIGHTS)
            if Path("/dev").is_dir():
                ruleset.allow_path("/dev", (fs.READ_FILE | fs.WRITE_FILE | fs.READ_DIR | fs.IOCTL_DEV) & handled)
            for folder in write:
                ruleset.allow_path(folder, writing | reading)
            others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
            if others and abi < 8:  # Landlock confines the calling thread (and what it starts) only
                return f"Python threads started before confinement: {', '.join(others)}"
            ruleset.restrict(landlock.RestrictFlag.TSYNC)  # ABI >= 8: every thread of the process (else dropped)
    except (OSError, ValueError, RuntimeError) as exc:  # LandlockError is an OSError
        return f"Landlock refused: {exc}"
    return None


_FILE_RIGHTS = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # EXECUTE, WRITE_FILE, READ_FILE, TRUNCATE, IOCTL_DEV


def _allow_except(ruleset, root: Path, access, denied: List[Path]) -> None:
    """Allow ``access`` beneath ``root`` but not beneath any of ``denied``: a root holding a denied path is
    allowed entry by entry (its other children), recursively."""
    if any(root == d or d in root.parents for d in denied):
        return
    if root.is_dir() and any(root in d.parents for d in denied):
        for child in root.iterdir():
            real = _real(child)
            if real is not None and real.exists() and (real == child or not child.is_symlink()):
                _allow_except(ruleset, real, access, denied)
        return
    ruleset.allow_path(root, access if root.is_dir() else access & _FILE_RIGHTS)


# ---------------------------------------------------------------------- the worker's main loop
def worker_main(conn, init: dict) -> None:
    """Entry point of the worker process: prepare, confine, then answer the harness until told to quit."""
    os.setsid()  # its own process group: killed as one; the terminal's Ctrl-C goes to the harness only
    multiprocessing.current_process()._config.pop("daemon", None)  # a method may start processes (killed with it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    os.environ.pop("FEWSHOT_BENCH_DATA", None)
    for name in ("TMPDIR", "TEMP", "TMP"):
        os.environ[name] = init["scratch"]
    tempfile.tempdir = init["scratch"]
    try:
        cap_memory(init["memory_limit_mb"])
        torch.set_num_threads(init["threads"])
        tqdm.monitor_interval = 0  # no monitor thread from a loading bar: Landlock (ABI < 8) confines this thread only
        tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a POSIX semaphore that the
        # confined process could not unlink at exit (a PermissionError traceback and a "leaked semaphore" warning)
        for name in ("core.builtins", "execution.harness", "methods.api", "methods.spec", "baselines", "methods.sgg", "tasks"):
            importlib.import_module(f"fewshot_bench.{name}")  # their folders are readable after confinement
        backbones = {a: load_backbone(init["backbone"], device=init["device"], attn_implementation=a)
                     for a in init["attn"]}
        level, note = "process", None
        if init["isolation"] == "sandboxed":
            note = confine(read=init["read"], write=[init["scratch"]], deny=init["deny"])
            level = "sandboxed" if note is None else "process"
            if note is None:
                drop_capabilities()
        conn.send_bytes(pack(("ready", level, note)))
    except BaseException as exc:  # noqa: BLE001 - reported to the harness
        conn.send_bytes(pack(("fatal", f"{type(exc).__name__}: {exc}")))
        return
    _serve_harness(conn, init, backbones)


def _serve_harness(conn, init: dict, backbones: dict) -> None:
    hosted: Dict[int, object] = {}  # token -> method instance

    def send(*message):
        conn.send_bytes(pack(tuple(message)))

    def pool(name: str):
        def fetch(index: int) -> Episode:
            send("pool", name, index)
            reply = unpack(conn.recv_bytes(), trusted=True)
            if reply[0] != "episode":
                raise UserError(reply[1])
            return reply[1]
        return fetch

    def backbone_for(attn: str):
        if attn not in backbones:
            backbones[attn] = load_backbone(init["backbone"], device=init["device"], attn_implementation=attn)
        return backbones[attn]

    while True:
        message = unpack(conn.recv_bytes(), trusted=True)
        kind = message[0]
        if kind == "quit":
            return
        try:
            if kind == "describe":
                _, spec, overrides = message
                try:
                    method = method_from_spec(spec, overrides)
                except UserError as exc:
                    send("error", str(exc))
                    continue
                send("described", {"name": str(method.name), "protocol": str(method.protocol),
                                   "attn": str(method.attn_implementation), "opt_in": bool(method.opt_in),
                                   "figures": [dataclasses.asdict(f) for f in method.figures],
                                   "config": method.config_dict()})
            elif kind == "host":
                _, token, spec, overrides, attn, state = message
                method = method_from_spec(spec, overrides)
                if state is not None:
                    method.load_state_dict({k: v.to(init["device"]) for k, v in state.items()})
                hosted[token] = method
                backbone_for(attn)
                send("ok")
            elif kind == "episode":
                _, token, view, seed, autocast, has_source, card = message
                if card is not None:
                    register_task(view.task, card, overwrite=True)
                method = hosted[token]
                backbone = backbone_for(method.attn_implementation)
                cache_before = backbone.embedding_cache_seconds
                outcome = episode_outcome(method, backbone, view, seed, autocast_dtype=autocast,
                                          source_episodes=pool("source") if has_source else None,
                                          is_failure=lambda exc: True)
                send("outcome", _plain_outcome(outcome, backbone, cache_before, peak_memory_mb(backbone.device)))
            elif kind == "meta_train":
                _, token, seed, autocast, has_validation = message
                method = hosted[token]
                backbone = backbone_for(method.attn_implementation)
                method.meta_train(MetaContext(backbone, seed, pool("source"), autocast_dtype=autocast,
                                              validation_episodes=pool("validation") if has_validation else None))
                state = method.state_dict()
                if isinstance(state, dict):
                    state = {str(k): v.detach().cpu() if isinstance(v, torch.Tensor) else repr(v)
                             for k, v in state.items()}
                send("state", state if state is None or isinstance(state, dict) else repr(state))
        except BaseException as exc:  # noqa: BLE001 - the method's failure, reported with its episode
            send("error", failure_reason(exc)[:20000])


def _plain_outcome(outcome: dict, backbone, cache_before: float, peak: float) -> dict:
    """``outcome`` as tensors, numbers and strings only (what the harness reads back with weights_only)."""
    def number(value):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            return repr(value)[:200]

    figures, error = outcome["figures"], outcome["error"]
    if not isinstance(figures, dict):
        error = error or f"ValueError: ctx.figures is a {type(figures).__name__}, not a dict of declared figures"
        figures = {}
    stability = outcome["stability"]
    logits, initial = outcome["logits"], outcome["initial"]
    return {"error": error, "stability_error": outcome["stability_error"],
            "trainable_params": number(outcome["trainable_params"]),
            "logits": logits.detach().float().cpu() if isinstance(logits, torch.Tensor) else logits,
            "initial": None if initial is None else {k: v.detach().float().cpu() for k, v in initial.items()},
            "figures": {str(k): number(v) for k, v in figures.items()},
            "stability": {str(k): number(v) for k, v in stability.items()} if isinstance(stability, dict) else None,
            "peak_mem_mb": float(peak), "embedding_cache_seconds": backbone.embedding_cache_seconds - cache_before}
