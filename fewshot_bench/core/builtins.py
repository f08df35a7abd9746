"""The built-in methods and backbones, registered (as lazy import strings) when ``fewshot_bench`` is imported.

The baselines are plugins of the core: they are named here only as import strings and loaded on first use.
"""
from __future__ import annotations

from .registry import register_backbone, register_method

BUILTIN_METHODS = {
    "full_ft": "fewshot_bench.baselines.full_ft:FullFineTuning",
    "lora": "fewshot_bench.baselines.lora:LoRA",
    "protonet": "fewshot_bench.baselines.protonet:PrototypicalNetwork",
    "linear_probe": "fewshot_bench.baselines.linear_probe:LinearProbe",
    "setfit": "fewshot_bench.baselines.setfit:SetFit",
    "icl": "fewshot_bench.baselines.icl:InContextLearning",
    "maml": "fewshot_bench.baselines.maml:MAML",
    "fomaml": "fewshot_bench.baselines.maml:FOMAML",
    "sgg": "fewshot_bench.methods.sgg:SGG",
    "sgg-no-dir": "fewshot_bench.methods.sgg:SGGNoDir",
    "sgg-no-mag": "fewshot_bench.methods.sgg:SGGNoMag",
    "sgg-no-align": "fewshot_bench.methods.sgg:SGGNoAlign",
}

BUILTIN_BACKBONES = {
    "minilm": "fewshot_bench.methods.backbone:minilm",
    "tiny-encoder": "fewshot_bench.methods.backbone:tiny_encoder",
    "tiny-decoder": "fewshot_bench.methods.backbone:tiny_decoder",
}


def register_builtins() -> None:
    """Register every built-in method and backbone (idempotent)."""
    for name, target in BUILTIN_METHODS.items():
        register_method(name, target, overwrite=True)
    for name, target in BUILTIN_BACKBONES.items():
        register_backbone(name, target, overwrite=True)
