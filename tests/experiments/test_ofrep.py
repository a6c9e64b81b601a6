"""OFREP: bodies checked through OpenFeature's own provider over real HTTP, and byte for byte."""

import json

import httpx
import pytest
from openfeature.evaluation_context import EvaluationContext

from experiments.flags import Flag
from experiments.ofrep import Context, OfrepError, OfrepService, parse_context
from router.flags import ErrorCode, evaluate
from tests.support.ofrep import FLAGS, check_cases, client_for, make_service, serve

SINGLE = "/ofrep/v1/evaluate/flags/"
BULK = "/ofrep/v1/evaluate/flags"


@pytest.fixture
def server():
    with serve(make_service()) as running:
        yield running


@pytest.fixture
def http(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client


def test_openfeature_sdk_resolves_every_fixture_case(server):
    url, _ = server
    check_cases(url)


def test_rollout_through_the_sdk_matches_local_evaluation(server):
    url, _ = server
    client = client_for(url)
    compiled = Flag.from_dict(FLAGS[0]).compile()
    seen = set()
    for i in range(60):
        key = f"user-{i}"
        details = client.get_boolean_details("new-checkout", False, EvaluationContext(key, {"app": "2.0.0"}))
        local = evaluate(compiled, key, {"app": "2.0.0"})
        assert (details.value, details.variant, str(details.reason)) == (local.value, local.variant, "SPLIT")
        seen.add(details.variant)
    assert seen == {"on", "off"}


# ------------------------------------------------------------------ request parsing


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", Context(None, {})),
        (b"  \n", Context(None, {})),
        (b"{}", Context(None, {})),
        (b'{"context": null}', Context(None, {})),
        (b'{"context": {}, "future": 1}', Context(None, {})),
        (
            b'{"context": {"targetingKey": "u1", "age": 30, "beta": true, "tags": ["a"]}}',
            Context("u1", {"age": 30, "beta": True, "tags": ["a"]}),
        ),
        (b'{"context": {"targetingKey": "", "a": "b"}}', Context(None, {"a": "b"})),
        (b'{"context": {"targetingKey": null}}', Context(None, {})),
    ],
)
def test_parse_context(body, expected):
    assert parse_context(body) == expected


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"{", ErrorCode.PARSE_ERROR, "not valid JSON"),
        (b"\xff\xfe\x00", ErrorCode.PARSE_ERROR, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, ErrorCode.PARSE_ERROR, "not valid JSON"),
        (b"[]", ErrorCode.INVALID_CONTEXT, "must be a JSON object"),
        (b'"context"', ErrorCode.INVALID_CONTEXT, "must be a JSON object"),
        (b'{"context": [1]}', ErrorCode.INVALID_CONTEXT, "context must be a JSON object, got a list"),
        (b'{"context": "u1"}', ErrorCode.INVALID_CONTEXT, "got a string"),
        (b'{"context": {"targetingKey": 42}}', ErrorCode.INVALID_CONTEXT, "targetingKey must be a string"),
        (b'{"context": {"targetingKey": {"id": 1}}}', ErrorCode.INVALID_CONTEXT, "got an object"),
    ],
)
def test_bad_request_bodies(body, code, words):
    with pytest.raises(OfrepError, match=words) as err:
        parse_context(body)
    assert err.value.error_code is code


# ------------------------------------------------------------------ single flag over HTTP


def test_success_body_shape(http):
    response = http.post(SINGLE + "digits-route", json={"context": {"targetingKey": "u", "tier": "beta"}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "key": "digits-route",
        "value": "v2",
        "reason": "TARGETING_MATCH",
        "variant": "beta",
        "metadata": {"model": "digits"},
    }


def test_not_found_body_shape(http):
    response = http.post(SINGLE + "nope", json={"context": {}})
    assert response.status_code == 404
    assert response.json() == {
        "key": "nope",
        "errorCode": "FLAG_NOT_FOUND",
        "errorDetails": "flag 'nope' is not defined",
    }


def test_missing_targeting_key_is_a_400_evaluation_failure(http):
    response = http.post(SINGLE + "new-checkout", json={"context": {"app": "3.0.0"}})
    assert response.status_code == 400
    body = response.json()
    assert (body["key"], body["errorCode"]) == ("new-checkout", "TARGETING_KEY_MISSING")
    assert "no targeting key" in body["errorDetails"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{nope", "PARSE_ERROR"),
        (b'{"context": 3}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 7}}', "INVALID_CONTEXT"),
    ],
)
def test_bad_request_is_a_400_that_says_why(http, content, code):
    response = http.post(SINGLE + "banner-text", content=content)
    assert response.status_code == 400
    body = response.json()
    assert (body["key"], body["errorCode"]) == ("banner-text", code)
    assert body["errorDetails"]


def test_unknown_flag_wins_over_a_bad_body(http):
    assert http.post(SINGLE + "nope", content=b"{nope").status_code == 404


def test_every_prebuilt_body_is_spec_shaped():
    compiled = {data["key"]: Flag.from_dict(data).compile() for data in FLAGS}
    service = OfrepService(compiled, 1)
    for data in FLAGS:
        for outcome in compiled[data["key"]].outcomes():
            document = json.loads(service._bodies[id(outcome)])
            if outcome.error_code is None:
                assert set(document) == {"key", "value", "reason", "variant", "metadata"}
                assert all(type(v) in (bool, int, float, str) for v in document["metadata"].values())
            else:
                assert set(document) == {"key", "errorCode", "errorDetails"}
            assert document["key"] == data["key"]


def test_non_ascii_and_odd_keys_stay_valid_json():
    status, body, _ = make_service().evaluate("ключ\ud800", b"{}")
    assert status == 404
    assert json.loads(body)["key"] == "ключ\ud800"


# ------------------------------------------------------------------ bulk and ETags


def test_bulk_lists_every_flag_in_key_order_with_failures_inline(http):
    response = http.post(BULK, json={"context": {"plan": "pro", "app": "2.0.0"}})
    assert response.status_code == 200
    flags = response.json()["flags"]
    assert [f["key"] for f in flags] == sorted(d["key"] for d in FLAGS)
    by_key = {f["key"]: f for f in flags}
    assert by_key["new-checkout"]["reason"] == "TARGETING_MATCH"
    assert by_key["sample-ratio"] == {
        "key": "sample-ratio",
        "value": 0.25,
        "reason": "DISABLED",
        "variant": "low",
        "metadata": {},
    }
    # No targeting key and a rollout reached: that flag fails, the others still answer.
    response = http.post(BULK, json={"context": {"app": "2.0.0"}})
    by_key = {f["key"]: f for f in response.json()["flags"]}
    assert by_key["new-checkout"]["errorCode"] == "TARGETING_KEY_MISSING"
    assert by_key["banner-text"]["value"] == "Hello"


def test_bulk_etag_and_if_none_match(server, http):
    context = {"context": {"targetingKey": "u1", "country": "fr"}}
    first = http.post(BULK, json=context)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert http.post(BULK, json=context).headers["etag"] == etag  # stable

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = http.post(BULK, json=context, headers={"if-none-match": header})
        assert cached.status_code == 304
        assert cached.content == b""
        assert cached.headers["etag"] == etag

    stale = http.post(BULK, json=context, headers={"if-none-match": '"other"'})
    assert (stale.status_code, stale.headers["etag"]) == (200, etag)

    # Another context with the old ETag gets its own answer, never a wrong 304.
    other = http.post(
        BULK, json={"context": {"targetingKey": "u1", "country": "de"}}, headers={"if-none-match": etag}
    )
    assert other.status_code == 200
    assert other.headers["etag"] != etag
    # Attribute order does not matter; the key does.
    reordered = {"context": {"country": "fr", "targetingKey": "u1"}}
    assert http.post(BULK, json=reordered, headers={"if-none-match": etag}).status_code == 304
    assert (
        http.post(
            BULK, json={"context": {"targetingKey": "u2", "country": "fr"}}, headers={"if-none-match": etag}
        ).status_code
        == 200
    )

    # A new config version changes the ETag for the same context.
    _, running = server
    running.service = make_service(config_version=2)
    renewed = http.post(BULK, json=context, headers={"if-none-match": etag})
    assert renewed.status_code == 200
    assert renewed.headers["etag"] != etag


def test_bulk_bad_request_has_no_key(http):
    response = http.post(BULK, content=b"[1]")
    assert response.status_code == 400
    assert set(response.json()) == {"errorCode", "errorDetails"}
    assert response.json()["errorCode"] == "INVALID_CONTEXT"


def test_empty_flag_set():
    status, body, headers = OfrepService({}, 0).evaluate_bulk(b"")
    assert (status, json.loads(body)) == (200, {"flags": []})
    assert dict(headers)[b"etag"]
