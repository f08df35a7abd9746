"""Baseline methods (shipped as fewshot_bench.baselines)."""
