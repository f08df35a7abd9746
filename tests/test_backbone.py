"""Backbones: shapes and pooling, the per-run token cache, fresh copies, loading and its errors."""
import sys

import pytest
import torch

from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.core.errors import UserError

TEXTS = ["hi", "please pay my electricity bill before the end of the month", "book a table"]


@pytest.fixture(scope="module")
def tiny_decoder():
    return load_backbone("tiny-decoder", device="cpu")


@torch.no_grad()
def _embed(backbone, texts):
    return backbone.embed(backbone.pristine, backbone.tokenize(texts))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_shapes_and_padding_independence(kind, tiny_backbone, tiny_decoder):
    backbone = tiny_backbone if kind == "encoder" else tiny_decoder
    assert backbone.pooling == ("cls" if kind == "encoder" else "last") and backbone.hidden_size == 32
    batch = backbone.tokenize(TEXTS, [0, 1, 0])
    assert batch.input_ids.shape == batch.attention_mask.shape and batch.input_ids.shape[0] == 3 == len(batch)
    assert batch.labels.tolist() == [0, 1, 0]
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()  # some rows are padded
    padded = _embed(backbone, TEXTS)
    assert padded.shape == (3, 32)
    for i, text in enumerate(TEXTS):  # a padded row pools exactly like the same text alone
        torch.testing.assert_close(padded[i], _embed(backbone, [text])[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_pooling_positions(tiny_backbone, tiny_decoder):
    for backbone, position in ((tiny_backbone, 0), (tiny_decoder, -1)):
        ids = torch.tensor([backbone.tokenizer(TEXTS[1])["input_ids"]])
        hidden = backbone.pristine(input_ids=ids).last_hidden_state[0]
        # CLS = first token; decoder = last non-padding token (row 1 is the longest, row 0 is padded)
        torch.testing.assert_close(_embed(backbone, TEXTS)[1], hidden[position], atol=1e-5, rtol=1e-5)
        short = torch.tensor([backbone.tokenizer(TEXTS[0])["input_ids"]])
        torch.testing.assert_close(_embed(backbone, TEXTS)[0],
                                   backbone.pristine(input_ids=short).last_hidden_state[0, position],
                                   atol=1e-5, rtol=1e-5)


class _CountingTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.texts += list(texts)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_each_text_is_tokenized_once_per_run(tiny_backbone, monkeypatch):
    counting = _CountingTokenizer(tiny_backbone.tokenizer)
    monkeypatch.setattr(tiny_backbone, "tokenizer", counting)
    monkeypatch.setattr(tiny_backbone, "_token_cache", {})
    first = tiny_backbone.tokenize(["a", "b", "a"])
    second = tiny_backbone.tokenize(["b", "c", "a"])
    assert sorted(counting.texts) == ["a", "b", "c"]
    assert torch.equal(first.input_ids[0], first.input_ids[2])
    assert torch.equal(second.input_ids[2], first.input_ids[0])
    tiny_backbone.frozen_embeddings(["a", "c"])
    assert sorted(counting.texts) == ["a", "b", "c"]


def test_frozen_embeddings_are_cached_and_match_the_pristine_model(tiny_backbone, monkeypatch):
    monkeypatch.setattr(tiny_backbone, "_embedding_cache", {})
    vectors = tiny_backbone.frozen_embeddings(TEXTS + [TEXTS[0]])
    assert vectors.shape == (4, 32) and len(tiny_backbone._embedding_cache) == 3
    torch.testing.assert_close(vectors[:3], _embed(tiny_backbone, TEXTS), atol=1e-5, rtol=1e-5)
    assert torch.equal(vectors[0], vectors[3])


def test_fresh_model_is_an_independent_trainable_copy(tiny_backbone):
    before = {k: v.clone() for k, v in tiny_backbone.pristine.state_dict().items()}
    a, b = tiny_backbone.fresh_model(), tiny_backbone.fresh_model()
    assert a.training and all(p.requires_grad for p in a.parameters())
    assert not tiny_backbone.pristine.training
    assert not any(p.requires_grad for p in tiny_backbone.pristine.parameters())
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    for key, value in tiny_backbone.pristine.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key, value in b.state_dict().items():
        assert torch.equal(value, before[key]), key
    pa = dict(a.named_parameters())
    assert all(p.data_ptr() != pa[n].data_ptr() for n, p in b.named_parameters())


def test_unknown_short_name_suggests_a_close_one():
    with pytest.raises(UserError, match="did you mean 'tiny-encoder'"):
        load_backbone("tiny-encodr", device="cpu")


def test_eager_attention_option():
    backbone = load_backbone("tiny-encoder", device="cpu", attn_implementation="eager")
    assert backbone.pristine.config._attn_implementation == "eager" == backbone.attn_implementation
    assert backbone.fresh_model().config._attn_implementation == "eager"


def test_minilm_loads_offline_with_the_loading_bar_in_a_terminal_only(capfd, monkeypatch):
    """transformers' "Loading weights" bar would print between the lines of a log (a campaign worker's, `campaign
    status` piped to a file); in a terminal it stays; its switch is left as it was."""
    from transformers.utils import logging as transformers_logging

    assert transformers_logging.is_progress_bar_enabled()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    load_backbone("minilm", device="cpu")
    assert "Loading weights" in capfd.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    backbone = load_backbone("minilm", device="cpu")
    assert "Loading weights" not in "".join(capfd.readouterr()) and transformers_logging.is_progress_bar_enabled()
    assert backbone.hidden_size == 384 and backbone.pooling == "mean"
    assert backbone.pristine.config._attn_implementation == "sdpa"
    assert _embed(backbone, TEXTS[:2]).shape == (2, 384)


def test_frozen_embeddings_do_not_depend_on_batch_composition():
    """MiniLM (where padded batching changed the last bits): a text's cached vector is bit-identical
    whether it was embedded alone, with shorter or with longer texts, first or last."""
    text = "how do i reset my card pin"
    companions = ["hi", "please tell me why the transfer i made to my landlord yesterday evening has not arrived yet"]
    vectors = []
    for batch in ([text], companions + [text], [text] + companions[::-1]):
        backbone = load_backbone("minilm", device="cpu")
        vectors.append(backbone.frozen_embeddings(batch)[batch.index(text)])
    assert all(torch.equal(vectors[0], other) for other in vectors[1:])


def test_a_recycled_model_is_reset_in_place_to_the_pretrained_weights(demo_episode):
    from fewshot_bench.methods.adapters import apply_lora
    from fewshot_bench.baselines.full_ft import FullFineTuning
    from fewshot_bench.execution.harness import run_episode
    from fewshot_bench.methods.training import FullFTConfig

    backbone = load_backbone("tiny-encoder", device="cpu")  # its own: the test recycles into it
    method = FullFineTuning(FullFTConfig(steps=3, lr=1e-2))
    first = run_episode(method, demo_episode, backbone, seed=5)
    spare = backbone._spare
    assert spare is not None and not all(torch.equal(a, b) for a, b in zip(spare.parameters(),
                                                                            backbone.pristine.parameters()))
    spare.eval()
    model = backbone.fresh_model()
    assert model is spare and model.training and backbone._spare is None
    for a, b in zip(list(model.parameters()) + list(model.buffers()),
                    list(backbone.pristine.parameters()) + list(backbone.pristine.buffers())):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    backbone.recycle(model)
    second = run_episode(method, demo_episode, backbone, seed=5)  # on the recycled model: the same episode
    for key in ("predictions", "final_loss", "grad_norm_cv", "path_efficiency"):
        assert second[key] == first[key], key
    base = backbone.fresh_model()
    apply_lora(base, 2, 4)  # adapters injected into the base model's layers: not the pretrained layout any more
    backbone.recycle(base)
    assert backbone._spare is None


def test_cache_fill_batches_of_one_token_length_equal_batches_of_one():
    """On one CPU thread the cache embeds texts of equal token length together, each row equal to the text
    embedded alone bit for bit (MiniLM); with more threads (where that does not hold) it embeds them alone."""
    texts = ["my card was declined at the shop", "why was my transfer to a friend late",
             "how long does a top up take", "can i change my pin at an atm"]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            backbone = load_backbone("minilm", device="cpu")
            lengths = [len(ids) for ids in backbone._token_ids(texts)]
            filled = backbone.frozen_embeddings(texts)
            with torch.no_grad():
                alone = torch.stack([backbone.embed(backbone.pristine, backbone.tokenize([t]))[0].float() for t in texts])
            assert len(set(lengths)) < len(texts) and torch.equal(filled, alone), threads
    finally:
        torch.set_num_threads(before)
