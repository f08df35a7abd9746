"""Query prediction in length buckets equals one padded batch (float tolerance; the same class wherever the logits
decide it beyond that tolerance)."""
import pytest
import torch

from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import sample_episode
from fewshot_bench.execution.harness import predict_queries
from fewshot_bench.methods import EpisodeContext
from fewshot_bench.methods.spec import method_from_spec, parse_spec


def _episodes(count):
    data = get_task_data("demo_intents")
    return [sample_episode(data, n_way=5, k_shot=2, q_query=5, seed=3, index=i) for i in range(count)]


def test_length_buckets_cover_every_text_once_padded_to_their_own_longest(tiny_backbone):
    texts = _episodes(1)[0].query_texts
    buckets = tiny_backbone.length_buckets(texts, 4)
    positions = [i for chunk, _ in buckets for i in chunk]
    assert sorted(positions) == list(range(len(texts))) and len(buckets) == -(-len(texts) // 4)
    widths = [batch.input_ids.shape[1] for _, batch in buckets]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # sorted by length: short buckets, short padding
    for chunk, batch in buckets:
        assert batch.texts == tuple(texts[i] for i in chunk) and batch.labels is None
        assert int(batch.attention_mask.sum(1).max()) == batch.input_ids.shape[1]


@pytest.mark.parametrize("spec", ["full_ft(steps=3)", "lora(steps=3)", "protonet", "linear_probe"])
def test_bucketed_prediction_equals_one_batch(tiny_backbone, spec):
    method = method_from_spec(*parse_spec(spec))
    for i, episode in enumerate(_episodes(4)):
        torch.manual_seed(i)
        ctx = EpisodeContext(tiny_backbone, episode, seed=i)
        predictor = method.adapt(ctx)
        with torch.no_grad():
            whole = predictor.predict(ctx.batch(ctx.episode, "query")).float()
        for rows in (1, 3, 16):
            bucketed = predict_queries(predictor, tiny_backbone, episode.query_texts, episode.n_way, rows=rows)
            torch.testing.assert_close(bucketed, whole, rtol=1e-5, atol=1e-5)
            # the same class wherever one batch's top two logits are further apart than that tolerance allows (the
            # tiny random encoder puts protonet's cosines within 1e-5 of each other: there, rounding picks the class)
            top = whole.topk(2, -1).values
            decided = top[:, 0] - top[:, 1] > 2 * (1e-5 + 1e-5 * top[:, 0].abs())
            assert torch.equal(bucketed.argmax(-1)[decided], whole.argmax(-1)[decided])


def test_a_predictor_with_the_wrong_shape_is_named(tiny_backbone):
    from fewshot_bench.methods import Predictor

    texts = _episodes(1)[0].query_texts
    with pytest.raises(RuntimeError, match="logits of shape"):
        predict_queries(Predictor(lambda batch: torch.zeros(len(batch), 2)), tiny_backbone, texts, 5)
