"""SetFit (Tunstall et al., 2022) through the ``setfit`` library, on the run's backbone.

The library generates contrastive pairs from the support set, fine-tunes the sentence encoder on them
(cosine-similarity loss) and fits a scikit-learn logistic-regression head on the tuned embeddings.

Contract:
- The body is the episode's fresh in-memory backbone copy (``ctx.fresh_model()``) wrapped as a
  sentence-transformers model with the backbone's own pooling and max length; the wrapper's config and
  tokenizer come from a local folder written once per backbone (nothing is downloaded).
- The episode seed seeds pair sampling, shuffling and the head, so a seed gives the same predictions.
- Query logits are the head's log-probabilities of the tuned body's pooled vectors (fp32, no autocast,
  as the head was fitted on them).
- Each body optimisation step is recorded: the pair loss and the body gradients before the library's
  gradient-norm clipping (parameters the pair loss does not reach, e.g. a pooler, get zeros).
- ``setfit`` is an optional extra: a missing install is a one-line UserError naming it.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
import weakref
from dataclasses import dataclass

import torch
from sklearn.linear_model import LogisticRegression

from fewshot_bench.core.config import option
from fewshot_bench.core.errors import UserError
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor
from fewshot_bench.methods.backbone import library_bars_off
from fewshot_bench.methods.search_space import Range, SearchSpace

_POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}


@dataclass
class SetFitConfig(MethodConfig):
    num_iterations: int = option(20, help="setfit's num_iterations (the SetFit paper's 20, the library's default "
                                          "before 1.0): each support example gets this many positive and as many "
                                          "negative pairs; lower it, e.g. to 2, to bring a MiniLM episode on a CPU "
                                          "near full_ft's cost")
    num_epochs: int = option(1, help="epochs of contrastive body training over the generated pairs", low=1)
    batch_size: int = option(16, help="pairs per body optimisation step", low=1)
    body_lr: float = option(2e-5, help="learning rate of the sentence-encoder body", low=0)
    warmup_proportion: float = option(0.1, help="fraction of body steps with linear learning-rate warm-up", low=0,
                                      high=1)
    head_C: float = option(1.0, help="inverse L2 regularisation strength of the logistic-regression head", above=0)
    head_max_iter: int = option(1000, help="solver (lbfgs) iterations of the head", low=1)

    def __post_init__(self):
        super().__post_init__()  # types, limits, finite numbers
        self.validate()

    def validate(self) -> None:
        """UserError naming the first out-of-range field (also run when a method is built with overrides)."""
        for name in ("num_iterations", "num_epochs", "batch_size", "head_max_iter"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"setfit config field '{name}' is {getattr(self, name)}; use an integer >= 1")
        if not 0 <= self.warmup_proportion < 1:
            raise UserError(f"setfit config field 'warmup_proportion' is {self.warmup_proportion}; use 0 <= value < 1")
        for name in ("body_lr", "head_C"):
            if getattr(self, name) <= 0:
                raise UserError(f"setfit config field '{name}' is {getattr(self, name)}; use a positive number")


def import_setfit():
    """The ``setfit`` and ``sentence_transformers`` modules, or a UserError naming the extra to install."""
    try:
        import sentence_transformers
        import setfit
    except ImportError as exc:
        raise UserError(f"method 'setfit' needs the setfit library ({exc}); "
                        'install it with: pip install "fewshot-bench[setfit]"') from None
    setfit.logging.set_verbosity_warning()  # setfit sets INFO on import: one training banner per episode
    return setfit, sentence_transformers


# backbone -> (folder holding its config and tokenizer, transformer-module template without weights)
_TEMPLATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def no_library_bars():
    """transformers' and datasets' own progress bars off (saving and loading the template, the pair dataset's map),
    and sentence-transformers' logger at WARNING (its INFO lines, and the "Batches" bars its encode shows whenever
    that logger is at INFO, as in a run that logs progress), restored after: they would interleave with the run's
    progress lines."""
    sentence_logger = logging.getLogger("sentence_transformers")
    level = sentence_logger.level
    sentence_logger.setLevel(max(logging.WARNING, level))
    try:
        with library_bars_off(datasets=True):
            yield
    finally:
        sentence_logger.setLevel(level)


def _transformer_template(backbone):
    """A sentence-transformers ``Transformer`` module for ``backbone`` with its model slot empty (made once)."""
    if backbone not in _TEMPLATES:
        from sentence_transformers.sentence_transformer.modules import Transformer

        folder = tempfile.TemporaryDirectory(prefix="fsb-setfit-")
        with no_library_bars():
            backbone.pristine.save_pretrained(folder.name)
            backbone.tokenizer.save_pretrained(folder.name)
            module = Transformer(folder.name, max_seq_length=backbone.max_length)
        module.model = None
        _TEMPLATES[backbone] = (folder, module)
    return _TEMPLATES[backbone][1]


def sentence_encoder(ctx: EpisodeContext, model: torch.nn.Module):
    """``model`` (a backbone copy) as a SentenceTransformer with the backbone's pooling and max length."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = copy.deepcopy(_transformer_template(ctx.backbone))
    transformer.model = model
    pooling = Pooling(ctx.backbone.hidden_size, pooling_mode=_POOLING_MODES[ctx.backbone.pooling])
    return SentenceTransformer(modules=[transformer, pooling], device=str(ctx.device))


class SetFit(Method):
    name = "setfit"
    config_class = SetFitConfig
    opt_in = True  # an optional extra: `--methods all` must run without it

    def __init__(self, config=None):
        super().__init__(config)
        self.config.validate()
        import_setfit()  # a missing extra fails before any episode runs

    search_space = SearchSpace({"num_iterations": Range(2, 20, integer=True), "num_epochs": Range(1, 3, integer=True),
                                "body_lr": Range(1e-6, 1e-4, log=True), "head_C": Range(1e-2, 1e2, log=True)})

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        setfit, _ = import_setfit()
        from datasets import Dataset
        from setfit.compat import losses
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        cfg, seed = self.config, ctx.seed % 2**32
        model = ctx.fresh_model()
        params = [p for p in model.parameters() if p.requires_grad]
        last_loss = {}

        class RecordedLoss(losses.CosineSimilarityLoss):
            """setfit's pair loss, keeping the value of the latest step for the gradient recorder."""

            def forward(self, *args, **kwargs):
                loss = super().forward(*args, **kwargs)
                last_loss["value"] = loss.detach()
                return loss

        def record(grads):  # all body gradients of one step, before the trainer's gradient-norm clipping
            ctx.recorder.record(last_loss["value"], params,
                                grads=[torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])

        hook = torch.autograd.graph.register_multi_grad_hook(params, record, mode="all")
        head = LogisticRegression(C=cfg.head_C, max_iter=cfg.head_max_iter, random_state=seed)
        setfit_model = setfit.SetFitModel(model_body=sentence_encoder(ctx, model), model_head=head)
        try:
            with tempfile.TemporaryDirectory(prefix="fsb-setfit-run-") as output_dir:
                args = setfit.TrainingArguments(
                    output_dir=output_dir, num_iterations=cfg.num_iterations, num_epochs=cfg.num_epochs,
                    batch_size=cfg.batch_size, body_learning_rate=cfg.body_lr, seed=seed,
                    warmup_proportion=cfg.warmup_proportion, loss=RecordedLoss, save_strategy="no",
                    report_to="none", logging_strategy="no", show_progress_bar=False,
                    use_amp=ctx.autocast_dtype is not None and ctx.device.type == "cuda",
                    max_length=ctx.backbone.max_length)
                support = Dataset.from_dict({"text": list(ctx.support_texts), "label": ctx.support.labels.tolist()})
                with no_library_bars(), warnings.catch_warnings():
                    # the trainer's loader asks for pinned memory, which a CPU-only machine warns about every episode
                    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator", category=UserWarning)
                    # the head at 1-shot: one text per class is the task, not the regression sklearn suspects
                    warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
                    trainer = setfit.Trainer(model=setfit_model, args=args, train_dataset=support)
                    for callback in (ProgressCallback, PrinterCallback):
                        trainer.remove_callback(callback)
                    trainer.train()
        finally:
            hook.remove()
        model.to(ctx.device).eval()

        def predict(batch):
            features = ctx.backbone.embed(model, batch).float().cpu().numpy()
            return torch.from_numpy(head.predict_log_proba(features)).float().to(ctx.device)

        return Predictor(predict, sum(p.numel() for p in params) + ctx.n_way * (ctx.backbone.hidden_size + 1))
