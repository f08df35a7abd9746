"""What the sealed worker (:mod:`fewshot_bench.worker`) does to itself before it runs a method: Landlock confinement,
a memory cap, no capabilities; and the wire format between the worker and the harness.

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
import io
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import torch

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
        return f"the sealed worker died from {name}{cause} during the method's code"
    return f"the sealed worker exited with status {exitcode} during the method's code (os._exit or exit in the method)"


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
    from .task import BUILTIN_TASKS_DIR

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
    :data:`SYSTEM_READ`, the Python installation, :func:`module_roots` and ``read``, except beneath ``deny``;
    read-write beneath ``write`` and on devices. Returns None when enforced, else why not (nothing restricted)."""
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
        roots = [*SYSTEM_READ, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *module_roots(),
                 *read]
        with ruleset:
            for root in collapse(p for p in (_real(r) for r in roots) if p is not None and p.exists()):
                _allow_except(ruleset, root, reading, denied)
            if Path("/dev").is_dir():
                ruleset.allow_path("/dev", (fs.READ_FILE | fs.WRITE_FILE | fs.READ_DIR | fs.IOCTL_DEV) & handled)
            for folder in write:
                ruleset.allow_path(folder, writing | reading)
            ruleset.restrict()
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
