"""In-context learning (baselines/icl.py) on the tiny decoder: prompt construction from the card's template,
the token budget, label-word scoring against an unbatched forward, contextual calibration, the episode run,
and the errors (encoder backbone, bad template in a card)."""
import pytest
import torch

from fewshot_bench.baselines.icl import PromptBuilder, label_log_likelihoods
from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods import EpisodeContext
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.data.cards import load_card

TEMPLATE = "Utterance: {text}\nIntent: {label}\n\n"


@pytest.fixture(scope="module")
def decoder():
    from fewshot_bench.methods.backbone import load_backbone

    return load_backbone("tiny-decoder", device="cpu")


def _decode(tokenizer, ids):
    return tokenizer.decode(ids)


def test_prompt_is_the_template_filled_with_demonstrations_then_the_query(decoder):
    tok = decoder.tokenizer
    builder = PromptBuilder(tok, TEMPLATE, ["book_flight", "play_music"])
    batch = decoder.tokenize(["fly me to rome", "some jazz please", "wake me at six"])
    texts = builder.text_ids(batch)
    demos = [builder.demonstration(texts[0], 0), builder.demonstration(texts[1], 1)]
    context = builder.context(demos, builder.query(texts[2]), budget=1000)
    expected = ("Utterance: fly me to rome\nIntent: book flight\n\nUtterance: some jazz please\nIntent: play music\n\n"
                "Utterance: wake me at six\nIntent:")
    assert _decode(tok, context) == _decode(tok, tok(expected, add_special_tokens=False)["input_ids"])
    assert [_decode(tok, w) for w in builder.label_words] == ["book flight", "play music"]
    # a tight budget keeps the last demonstrations that fit, then the query; too tight is a UserError
    query = builder.query(texts[2])
    budget = len(query) + max(map(len, builder.label_words)) + len(demos[1])
    assert builder.context(demos, query, budget) == demos[1] + query
    with pytest.raises(UserError, match="max_prompt_tokens"):
        builder.context(demos, query, len(query))


def test_label_scores_equal_an_unbatched_forward(decoder):
    model = decoder.pristine
    contexts = [[101, 2023, 2003, 1037], [101, 7592]]
    words = [[2204], [3239, 2208]]
    scores = label_log_likelihoods(model, contexts, words, pad_id=0, device=decoder.device, batch_size=3)
    for i, context in enumerate(contexts):
        for c, word in enumerate(words):
            ids = torch.tensor([context + word])
            with torch.no_grad():
                logits = model(input_ids=ids).last_hidden_state[0] @ model.get_input_embeddings().weight.T
            log_p = torch.log_softmax(logits, -1)
            expected = sum(float(log_p[len(context) - 1 + j, t]) for j, t in enumerate(word))
            assert float(scores[i, c]) == pytest.approx(expected, abs=1e-4)


def test_icl_episode_is_deterministic_and_calibration_makes_the_content_free_query_uniform(decoder, demo_episode):
    first = run_episode(method_from_spec("icl"), demo_episode, decoder, seed=5)
    assert first["status"] == "ok", first["error"]
    assert first["trainable_params"] == 0 and first["steps"] == 0
    assert run_episode(method_from_spec("icl"), demo_episode, decoder, seed=5)["predictions"] == first["predictions"]
    method = method_from_spec("icl")
    ctx = EpisodeContext(decoder, demo_episode, seed=5)
    predict = method.adapt(ctx).predict
    uniform = predict(decoder.tokenize([method.config.content_free]))
    assert torch.allclose(uniform, torch.full_like(uniform, -torch.log(torch.tensor(3.0)).item()), atol=1e-5)
    raw = method_from_spec("icl", {"calibration": "none"}).adapt(ctx).predict(decoder.tokenize(["N/A"]))
    assert not torch.allclose(raw, uniform, atol=1e-4)


def test_icl_errors(tiny_backbone, demo_episode, tmp_path):
    record = run_episode(method_from_spec("icl"), demo_episode, tiny_backbone, seed=0)
    assert record["status"] == "failed" and "needs a decoder backbone" in record["error"]
    with pytest.raises(UserError, match="calibration"):
        method_from_spec("icl", {"calibration": "platt"})
    card = tmp_path / "bad.yaml"
    card.write_text("name: bad\nversion: 1\ndescription: d\ncitation: c\nlicense: l\nsource: {local_dir: x}\n"
                    "splits: [train]\npools: {fractions: {source: 0.5, target: 0.5}}\n"
                    "prompt_template: '{label} then {text}'\n")
    with pytest.raises(UserError, match=r"bad.yaml: prompt_template .* needs one \{text\} followed by one \{label\}"):
        load_card(card)
