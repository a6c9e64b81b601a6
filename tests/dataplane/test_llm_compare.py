"""The comparison of a shadow's LLM answer with the primary's, on known values."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from gateway.dataplane.llm_compare import compare_answers, cosine, jaccard, texts_of, tokens


def _event(doc: dict) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _chat_stream(*pieces: str) -> list[bytes]:
    events = [_event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    events += [_event({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    events.append(_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    events.append(_event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}))
    return [*events, b"data: [DONE]\n\n"]


def _chat(text: str | None) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def _embeddings(*vectors: list[float], b64: bool = False) -> bytes:
    def encode(v: list[float]) -> object:
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if b64 else v

    data = [{"index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
    return json.dumps({"object": "list", "data": data}).encode()


def test_tokens_are_words_and_punctuation():
    assert tokens("Hello, world! Hello") == {"Hello", ",", "world", "!"}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("the king is old", "the king was old", 3 / 5),
        ("the king", "the king", 1.0),
        ("king the", "the king the", 1.0),  # a set: order and repeats do not count
        ("", "", 1.0),
        ("crown", "", 0.0),
        ("a b", "c d", 0.0),
    ],
)
def test_jaccard(a, b, expected):
    assert jaccard(a, b) == pytest.approx(expected)


def test_cosine():
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0
    assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(2**-0.5)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0


def test_texts_of_whole_and_streamed_answers():
    assert texts_of("chat", _chat("The king."), None) == ["The king."]
    assert texts_of("chat", _chat(None), None) == [""]  # a tool call: no text content
    assert texts_of("chat", None, _chat_stream("The", " king", ".")) == ["The king."]
    interleaved = [
        _event({"choices": [{"index": 1, "text": "b1"}]}),
        _event({"choices": [{"index": 0, "text": "a1"}]}),
        _event({"choices": [{"index": 1, "text": " b2"}]}),
        b"data: [DONE]\n\n",
    ]
    assert texts_of("text", None, interleaved) == ["a1", "b1 b2"]
    whole = json.dumps({"choices": [{"index": 0, "text": "x"}, {"index": 1, "text": "y"}]}).encode()
    assert texts_of("text", whole, None) == ["x", "y"]


def test_a_single_choice_stream_reads_as_its_chunks_parsed_one_by_one():
    """The fast path (text pieces found in the joined events) and the general one (every chunk
    parsed) agree, escapes, non-ASCII, nested "content" and spaced JSON included."""
    tricky = ['The "king"', " said: \\ \u00e9\n", ' {"content": "no"}', " caf\u00e9 ☕", ""]
    events = _chat_stream(*tricky)
    events.insert(2, b'data: {"choices": [{"index": 0, "delta": {"content": " spaced"}}]}\n\n')
    expected = "".join(tricky[:1]) + " spaced" + "".join(tricky[1:])
    assert texts_of("chat", None, events) == [expected]
    forced = [*events, _event({"choices": [{"index": 1, "delta": {"content": ""}}]})]  # two choices
    assert texts_of("chat", None, forced) == [expected, ""]
    assert texts_of("chat", None, _chat_stream()) == [""]  # the role event only: one empty choice
    assert texts_of("chat", None, [b"data: [DONE]\n\n"]) == []


def test_identical_text_is_an_exact_match_whole_or_streamed():
    result = compare_answers("chat", _chat("The king."), None, None, _chat_stream("The ", "king."))
    assert result.exact and result.jaccard == 1.0 and result.reason is None


def test_different_text_reports_its_jaccard_never_the_text():
    result = compare_answers("chat", _chat("the king is old"), None, _chat("the king was old"), None)
    assert not result.exact and result.jaccard == pytest.approx(0.6)
    assert result.reason == "texts differ: token Jaccard 0.600 (4 vs 4 tokens)"
    assert "king" not in result.reason


def test_a_missing_choice_counts_as_an_empty_text():
    two = json.dumps({"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]}).encode()
    one = json.dumps({"choices": [{"index": 0, "text": "a"}]}).encode()
    result = compare_answers("text", two, None, one, None)
    assert not result.exact and result.jaccard == pytest.approx(0.5)
    assert result.reason == "2 choice(s) from the primary, 1 from the shadow"


@pytest.mark.parametrize(
    ("shadow", "shadow_events"),
    [
        (b"not json", None),
        (b'{"error": {"message": "overloaded"}}', None),
        (None, [_event({"error": {"message": "stream broken", "code": "x"}})]),
        (b'{"choices": "none"}', None),
    ],
)
def test_an_answer_that_cannot_be_read_differs_with_a_reason(shadow, shadow_events):
    result = compare_answers("chat", _chat("x"), None, shadow, shadow_events)
    assert not result.exact and result.reason.startswith("an answer could not be read")


def test_embeddings_by_cosine_json_or_base64():
    same = compare_answers(
        "embeddings", _embeddings([1, 2], [0.5, 0]), None, _embeddings([1, 2], [0.5, 0], b64=True), None
    )
    assert same.exact and same.cosine_mean == pytest.approx(1.0) and same.cosine_min == pytest.approx(1.0)
    turned = compare_answers(
        "embeddings", _embeddings([1, 0], [1, 1]), None, _embeddings([0, 1], [1, 1]), None
    )
    assert not turned.exact
    assert_allclose([turned.cosine_mean, turned.cosine_min], [0.5, 0.0], atol=1e-12)
    assert turned.reason == "embeddings differ: min cosine 0.0000 over 2 input(s)"


def test_embeddings_of_other_shapes_differ_with_a_reason():
    fewer = compare_answers("embeddings", _embeddings([1, 0], [1, 1]), None, _embeddings([1, 0]), None)
    assert fewer.reason == "2 embeddings from the primary, 1 from the shadow" and fewer.cosine_mean is None
    wider = compare_answers("embeddings", _embeddings([1, 0]), None, _embeddings([1, 0, 0]), None)
    assert wider.reason == "embedding dimensions differ (2 vs 3)" and not wider.exact
