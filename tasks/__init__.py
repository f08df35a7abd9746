"""Built-in task cards (YAML), shipped as fewshot_bench.tasks."""
