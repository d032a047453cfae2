"""Tests of baselines.py and the chance level. Run: python -m pytest tests/test_baselines.py -q"""
import numpy as np
import pytest

from baselines import chance_mrr, train_nbow
from metrics import mrr, target_ranks
from tokenizer import get_tokenizer

WORDS = ('socket retry timeout parse json file read write open close list sort merge split join path url http '
         'request response cache lock thread queue buffer stream encode decode hash token config').split()


def toy_pairs(rng, n):
    """Query: three topic words; code: the same words inside identifiers among filler."""
    pairs = []
    for _ in range(n):
        w = rng.choice(WORDS, 3, replace=False)
        filler = ' '.join(rng.choice(WORDS, 6))
        pairs.append((f"{w[0]} the {w[1]} and {w[2]}", f"def {w[0]}_{w[1]}(x):\n    return {w[2]}(x)  # {filler}"))
    return pairs


def test_nbow_learns_lexical_matching():
    """Trained 10 epochs on 2,000 toy pairs, the NBoW ranks 300 unseen pairs far above chance (1/300 * H_300 = 2.1%)."""
    tok = get_tokenizer('cl100k_base')
    rng = np.random.default_rng(0)
    model, stats = train_nbow(toy_pairs(rng, 2000), tok, epochs=10, batch_size=100, max_seconds=600)
    assert stats['epochs'] == 10 and stats['pairs_seen'] == 20_000
    test = toy_pairs(rng, 300)
    s = (model.embed([q for q, _ in test]) @ model.embed([c for _, c in test]).T).numpy()
    assert mrr(target_ranks(s)) > 0.3
    again, _ = train_nbow(toy_pairs(np.random.default_rng(0), 2000), tok, epochs=10, batch_size=100, max_seconds=600)
    assert np.allclose(again.table.weight.detach().numpy(), model.table.weight.detach().numpy())  # seeded


@pytest.mark.parametrize('sizes', [[1000], [1000, 1000, 7], [5, 3]])
def test_chance_mrr_is_the_expected_mrr_of_a_random_ranking(sizes):
    rng = np.random.default_rng(0)
    batches = [np.arange(n) for n in sizes]
    reps = 4000 // max(sizes)  # the same number of repetitions of every batch keeps chance_mrr's weighting
    sim = np.concatenate([target_ranks(rng.random((n, n))) for _ in range(max(reps, 20)) for n in sizes])
    assert abs(chance_mrr(batches) - mrr(sim)) < 0.1 * chance_mrr(batches)
    if sizes == [1000]:
        assert abs(chance_mrr(batches) - sum(1 / r for r in range(1, 1001)) / 1000) < 1e-12  # 0.748%
