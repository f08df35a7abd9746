"""Speed / memory benchmark of the method harness on MiniLM (not a test; see bench/README.md).

    python bench/bench.py [--episodes 3] [--steps 10] [--data-dir ../shared/data] [--json out.json]
                          [--methods full_ft,lora,protonet,linear_probe] [--device cpu]

Every method runs on the IDENTICAL episodes (banking77 fold 1, 5-way 5-shot 15 queries by default)
through ``evaluate.episode_record`` (what ``fewshot-bench run`` evaluates: the harness, the run's autocast, its
thread default), each in its own subprocess so that peak memory belongs to that method alone.
A hand-written PyTorch loop (encoder + linear head over the CLS vector, fused AdamW where torch has it, the
same autocast, tokenized per episode with the Hugging Face tokenizer) runs on the same episodes as the
reference for ``full_ft``.
Prints the JSON result, then a Markdown table. Other methods (e.g. maml, sgg, or path/to/file.py:Class)
are added with ``--methods``; any method whose config has a ``steps`` field gets ``--steps``.
This file parses the options, starts the workers and reports; what each worker measures is in bench_measure.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench_measure import PLAIN, bench_method, bench_paired, bench_plain

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "
DEFAULT_METHODS = "full_ft,lora,protonet,linear_probe"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=3, help="measured episodes per method (after one warm-up)")
    p.add_argument("--steps", type=int, default=10, help="optimisation steps (methods with a 'steps' field, plain loop)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated method names or file.py:Class specs, each optionally with config "
                        "overrides as on the leaderboard: sgg(mode=exact) or lora(r=4,alpha=8)")
    p.add_argument("--no-plain", action="store_true", help="skip the hand-written PyTorch reference loop")
    p.add_argument("--paired", default="full_ft",
                   help="methods (comma-separated, '' for none) also timed alternately with --paired-against in one "
                        "process, for a load-robust time ratio")
    p.add_argument("--paired-against", default=PLAIN,
                   help=f"reference of --paired: {PLAIN} (the hand-written loop; no source pool, so both do the same "
                        "work) or a method, e.g. full_ft (both then run with the task's source pool, as on the "
                        "leaderboard)")
    p.add_argument("--data-dir", default=os.environ.get("FEWSHOT_BENCH_DATA") or str(REPO.parent / "shared" / "data"))
    p.add_argument("--task", default="banking77")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the default of fewshot-bench run)")
    p.add_argument("--in-process", action="store_true",
                   help="run every method in this process (faster to start; peak memory is then cumulative)")
    p.add_argument("--json", help="also write the JSON result to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------- workers

def run_worker(name: str, args) -> dict:
    if name.startswith("paired:"):
        return bench_paired(name.partition(":")[2], args)
    return bench_plain(args) if name == PLAIN else bench_method(name, args)


def _in_subprocess(name: str, argv) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"method": name, "spec": name, "error": f"worker exited with code {proc.returncode}"}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# ----------------------------------------------------------------------------------------- report

def _fmt(value, spec):
    return "–" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    header = ("| method | episodes | s/episode | s/step | peak MB | MB over loaded backbone | accuracy "
              "| trainable params | warm episodes/s | time vs plain |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in result["methods"]:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['error']} |" + " |" * 8)
            continue
        failed = sum(s != "ok" for s in r["statuses"])
        rows.append(" | ".join([
            f"| {r['method']}", f"{r['episodes']}" + (f" ({failed} not ok)" if failed else ""),
            _fmt(r["sec_per_episode"], ".2f"), _fmt(r["sec_per_step"], ".3f"), _fmt(r["peak_mem_mb"], ".0f"),
            _fmt(r["mem_over_loaded_mb"], ".0f"), _fmt(r["accuracy"], ".3f"), f"{r['trainable_params']:,}",
            _fmt(r["warm_episodes_per_sec"], ".1f"), _fmt(r.get("time_vs_plain"), ".2f") + " |"]))
    return "\n".join(rows)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(run_worker(args.worker, args)), flush=True)
        return 0
    from fewshot_bench.methods.spec import split_specs

    names = split_specs(args.methods) + ([] if args.no_plain else [PLAIN])
    results = []
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result = run_worker(name, args) if args.in_process else _in_subprocess(name, argv)
        print(f"[bench] {name}: {result.get('sec_per_episode')} s/episode", file=sys.stderr, flush=True)
        results.append(result)
    paired = []
    if args.paired_against != PLAIN or not args.no_plain:
        for name in split_specs(args.paired):
            print(f"[bench] paired {name} / {args.paired_against} ...", file=sys.stderr, flush=True)
            pair = run_worker(f"paired:{name}", args) if args.in_process else _in_subprocess(f"paired:{name}", argv)
            print(f"[bench] paired {name}: ratio {pair.get('ratio')}", file=sys.stderr, flush=True)
            paired.append(pair)
    plain = next((r for r in results if r["method"] == PLAIN and "error" not in r), None)
    prints = {tuple(r["fingerprints"]) for r in results + paired if "fingerprints" in r}
    assert len(prints) <= 1, "methods did not see identical episodes"
    for r in results:
        if plain and r.get("sec_per_episode") and r.get("steps_per_episode"):
            r["time_vs_plain"] = r["sec_per_episode"] / plain["sec_per_episode"]
    import torch

    full_ft = next((r for r in results if r["method"] == "full_ft" and "error" not in r), None)
    full_ft_pair = next((p for p in paired if p["method"] == "full_ft" and p.get("reference") == PLAIN), None)
    protonet = next((r for r in results if r["method"] == "protonet" and "error" not in r), None)
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "device": args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
                        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                        "load_average_at_end": os.getloadavg(), "isolated_processes": not args.in_process},
        "full_ft_vs_plain_time_ratio": full_ft.get("time_vs_plain") if full_ft else None,
        "full_ft_vs_plain_time_ratio_paired": full_ft_pair["ratio"] if full_ft_pair else None,
        "protonet_warm_episodes_per_sec": protonet["warm_episodes_per_sec"] if protonet else None,
        "methods": results,
        "paired": paired,
    }
    text = json.dumps(result, indent=2)
    print(text)
    print()
    print(markdown(result))
    for pair in paired:
        if "error" in pair:
            print(f"\npaired {pair['method']} / {args.paired_against}: {pair['error']}")
            continue
        each = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(pair["seconds"], pair["reference_seconds"]))
        print(f"\npaired {pair['method']} / {pair['reference']} time ratio (alternating episodes, one process): "
              f"{pair['ratio']:.2f}  ({pair['clock']} s per episode, {pair['method']}/{pair['reference']}: {each})")
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if all("error" not in r for r in results + paired) else 1


if __name__ == "__main__":
    sys.exit(main())
