"""tinylm's model: tokens, smoothing, held-out perplexity and seeded sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.testing import assert_allclose

from models.llm import Generation, Sampling, held_out_perplexity, join_piece, load_tinylm, rng_for, tokenize
from models.llm._generate import _nucleus, draw
from models.llm._lm import BOS, EOS, UNK, AddKBigram, KneserNey, Vocabulary, perplexity
from models.zoo import UnknownModelError


def _join(tokens: list[str]) -> str:
    out, previous = "", None
    for token in tokens:
        out += join_piece(previous, token)
        previous = token
    return out


def test_tokens_are_words_and_punctuation_and_join_back() -> None:
    text = "I think I hear them.--Stand, ho! Who is there? 'Tis reliev'd good-night (sir)."
    tokens = tokenize(text)
    assert tokens[:6] == ["I", "think", "I", "hear", "them", "."]
    assert "--" in tokens and "'Tis" in tokens and "reliev'd" in tokens and "good-night" in tokens
    assert _join(tokens) == text


def _toy() -> tuple[Vocabulary, list[list[int]]]:
    speeches = [["a", "b", "a"], ["a", "b", "b"], ["b", "a"], ["c"]]
    vocab = Vocabulary(speeches, min_count=2)  # "c" is seen once: <unk>
    return vocab, [vocab.encode(s) for s in speeches]


def test_vocabulary_maps_rare_words_to_unk() -> None:
    vocab, encoded = _toy()
    assert vocab.words == ("<unk>", "</s>", "<s>", "a", "b")
    assert encoded[3] == [UNK]


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kneser_ney_distributions_are_proper(order: int) -> None:
    vocab, encoded = _toy()
    model = KneserNey(vocab, encoded, order)
    for context in ([], [3], [3, 4], [4, 4, 4], [UNK]):
        probs = model.distribution(context)
        assert_allclose(probs.sum(), 1.0)
        assert probs[BOS] == 0.0
        assert (np.delete(probs, BOS) > 0).all()  # smoothing leaves nothing impossible


def _reference_kn_bigram(speeches: list[list[int]], size: int, word: int, h: int) -> float:
    """Interpolated modified Kneser-Ney for bigrams, written straight from Chen & Goodman."""
    bigrams: dict[tuple[int, int], int] = {}
    for speech in speeches:
        seq = [BOS, *speech, EOS]
        for pair in itertools.pairwise(seq):
            bigrams[pair] = bigrams.get(pair, 0) + 1

    def discounts(counts: list[int]) -> list[float]:
        n = [max(sum(1 for c in counts if c == i), 1) for i in (1, 2, 3, 4)]
        y = n[0] / (n[0] + 2 * n[1])
        return [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]

    def discounted(c: int, d: list[float]) -> float:
        return c - d[min(c, 3) - 1] if c else 0.0

    continuation = {w: sum(1 for (_, x) in bigrams if x == w) for w in range(size)}
    d1 = discounts([c for c in continuation.values() if c])
    total1 = sum(continuation.values())
    floor = sum(d1[min(c, 3) - 1] for c in continuation.values() if c) / total1
    unigram = discounted(continuation[word], d1) / total1 + floor / size
    d2 = discounts(list(bigrams.values()))
    followers = {w: c for (x, w), c in bigrams.items() if x == h}
    total2 = sum(followers.values())
    gamma = sum(d2[min(c, 3) - 1] for c in followers.values()) / total2
    return discounted(followers.get(word, 0), d2) / total2 + gamma * unigram


def test_kneser_ney_bigram_matches_the_formula() -> None:
    vocab, encoded = _toy()
    model = KneserNey(vocab, encoded, 2)
    for h in (3, 4, BOS):
        raw = model._raw((h,))
        expected = [_reference_kn_bigram(encoded, len(vocab), w, h) for w in range(len(vocab))]
        assert_allclose(raw, expected)


def test_add_k_bigram_is_textbook() -> None:
    vocab, encoded = _toy()
    model = AddKBigram(vocab, encoded, k=1.0)
    raw = model._raw((4,))  # after "b": b->a 2, b->b 1, b-></s> 1; total 4, V = 5
    assert_allclose(raw, [1 / 9, 2 / 9, 1 / 9, 3 / 9, 2 / 9])
    assert_allclose(model._raw((EOS,)), np.full(5, 0.2))  # an unseen context: uniform


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    vocab, encoded = _toy()
    model = AddKBigram(vocab, [], k=1.0)  # no counts: uniform over the 4 words that are not <s>
    assert_allclose(perplexity(model, encoded), 4.0)


def test_v2_is_clearly_better_than_v1_on_held_out_text() -> None:
    v1, v2 = held_out_perplexity("v1"), held_out_perplexity("v2")
    assert_allclose([v1, v2], [259.9, 143.8], rtol=1e-3)  # the README's figures
    assert v2 < 0.6 * v1


def test_unknown_version_is_named() -> None:
    with pytest.raises(UnknownModelError, match="v1, v2"):
        load_tinylm("v9")


def _generate(
    sampling: Sampling, prompt: str = "To be, or not to be", choice: int = 0
) -> tuple[str, Generation]:
    lm = load_tinylm("v2").lm
    tokens = tokenize(prompt)
    g = Generation(lm, lm.vocab.encode(tokens), tokens[-1], sampling, rng_for(sampling.seed, choice))
    parts = []
    while g.finish_reason is None:
        parts.append(g.step())
    return "".join(parts), g


def test_same_seed_same_text_other_seed_or_choice_other_text() -> None:
    sampling = Sampling(max_tokens=40, seed=11)
    a, _ = _generate(sampling)
    assert _generate(sampling)[0] == a
    assert _generate(Sampling(max_tokens=40, seed=12))[0] != a
    assert _generate(sampling, choice=1)[0] != a


def test_max_tokens_ends_with_length_and_counts_tokens() -> None:
    text, g = _generate(Sampling(max_tokens=5, seed=11))
    assert g.finish_reason == "length" and g.tokens == 5
    assert len(tokenize(text)) == 5


def test_temperature_zero_is_greedy_and_tiny_top_p_too() -> None:
    greedy, g = _generate(Sampling(max_tokens=30, temperature=0.0))
    nucleus, _ = _generate(Sampling(max_tokens=30, top_p=1e-9, seed=1))
    assert greedy == nucleus
    lm = load_tinylm("v2").lm
    probs = lm.distribution(lm.vocab.encode(["to", "be"]))
    probs[UNK] = 0.0
    assert tokenize(greedy)[0] == lm.vocab.words[int(np.argmax(probs))]
    assert g.tokens == len(tokenize(greedy))


def test_end_of_speech_finishes_with_stop() -> None:
    _, g = _generate(Sampling(max_tokens=2000, seed=3))
    assert g.finish_reason == "stop" and 0 < g.tokens < 2000


def test_stop_string_cuts_the_text_before_it() -> None:
    full, _ = _generate(Sampling(max_tokens=60, seed=5))
    word = full.split()[3]
    cut, g = _generate(Sampling(max_tokens=60, seed=5, stop=(word,)))
    assert g.finish_reason == "stop"
    assert cut == full[: full.index(word)]


def test_penalties_make_repetition_rarer() -> None:
    lm = load_tinylm("v1").lm  # v1's greedy text loops ("and the world, and the world, ...")

    def greedy(**penalties: float) -> list[str]:
        g = Generation(lm, [], None, Sampling(max_tokens=100, temperature=0.0, **penalties), rng_for(None, 0))
        parts = []
        while g.finish_reason is None:
            parts.append(g.step())
        return tokenize("".join(parts))

    def most_repeated(tokens: list[str]) -> int:
        return max(tokens.count(t) for t in tokens)

    plain = greedy()
    assert len(set(plain)) < 10 and most_repeated(plain) > 10
    for penalties in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert most_repeated(greedy(**penalties)) * 3 < most_repeated(plain)


def test_blocked_draw_agrees_with_a_plain_prefix_sum() -> None:
    assert [draw(np.array([0.0, 1.0, 0.0, 3.0]), u) for u in (0.0, 0.24, 0.26, 0.999)] == [1, 1, 3, 3]
    rng = np.random.default_rng(5)
    for n in (3, 64, 65, 200, 7789):
        weights = rng.random(n)
        weights[rng.random(n) < 0.3] = 0.0
        cumulative = np.cumsum(weights)
        for u in rng.random(200):
            expected = int(np.searchsorted(cumulative, u * cumulative[-1], "right"))
            assert draw(weights, float(u)) == expected
            assert weights[expected] > 0


def test_min_tokens_and_ignore_eos_hold_the_end_back() -> None:
    _, free = _generate(Sampling(max_tokens=300, seed=3))
    assert free.finish_reason == "stop"
    _, held = _generate(Sampling(max_tokens=300, min_tokens=300, seed=3))
    assert (held.finish_reason, held.tokens) == ("length", 300)


def test_nucleus_is_the_full_sorts_prefix() -> None:
    rng = np.random.default_rng(2)
    for n, trial in itertools.product((10, 300, 7789), range(20)):
        probs = rng.random(n) ** 12  # peaked, like a language model's
        probs[rng.random(n) < 0.2] = 0.0
        if trial % 5 == 0:
            probs = np.ones(n)  # all tied: ties go by id
        for top_p in (0.05, 0.5, 0.95):
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = int(np.searchsorted(cumulative, top_p * probs.sum())) + 1
            chosen, weights = _nucleus(probs, top_p)
            assert chosen.tolist() == order[:keep].tolist()
            assert_allclose(weights, cumulative[:keep])
