"""The OpenAI HTTP API as tinylm speaks it: requests validated into plain data, answers and
stream chunks shaped as OpenAI's (and vLLM's) are, errors as `{"error": {message, type,
param, code}}`.

Where the API is silent we do what vLLM does: unknown fields are ignored, an unknown model
is a 404 `model_not_found`, the prompt plus `max_tokens` may not exceed the context length,
and vLLM's extra sampling fields `min_tokens` and `ignore_eos` work (a benchmark asks for
exactly N tokens with `ignore_eos: true`).

Token counts are tinylm's word and punctuation tokens (`models.llm.tokenize`); a chat
prompt counts the tokens of every message's content.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from models.faults import is_int
from models.llm._generate import Sampling, TokenLogprob
from models.llm._tokens import tokenize

__all__ = [
    "MAX_MODEL_LEN",
    "ApiError",
    "CompletionRequest",
    "EmbeddingRequest",
    "Kind",
    "Prompt",
    "chat_logprobs",
    "error_doc",
    "parse_embedding_request",
    "parse_request",
    "stream_chunk",
    "text_logprobs",
]

MAX_MODEL_LEN = 2048  # tokens of prompt plus completion, as vLLM's --max-model-len
MAX_N = 16
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's legacy completions default
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

Kind = Literal["chat", "text"]


class ApiError(Exception):
    """A request we answer with an OpenAI error document and `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> bytes:
        return error_doc(str(self), self.type, self.param, self.code)


def error_doc(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt: the tokens the model continues and how many it counts for `usage`."""

    tokens: tuple[str, ...]  # what the completion continues (a chat: the last message)
    counted: int  # prompt tokens for usage
    text: str  # echoed back by completions with `echo`


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    kind: Kind
    model: str
    prompts: tuple[Prompt, ...]  # chat: exactly one; each gets `n` choices
    n: int
    sampling: Sampling
    stream: bool
    include_usage: bool
    echo: bool

    @property
    def prompt_tokens(self) -> int:
        return sum(p.counted for p in self.prompts)


def parse_request(kind: Kind, body: bytes, vocabulary: tuple[str, ...]) -> CompletionRequest:
    """Validate a `/v1/chat/completions` (`chat`) or `/v1/completions` (`text`) body."""
    doc = _json_object(body)
    model = _model_name(doc)
    if kind == "chat":
        prompts: tuple[Prompt, ...] = (_chat_prompt(doc),)
    else:
        prompts = _text_prompts(doc, "prompt", vocabulary)
    for name in ("logit_bias",):
        if doc.get(name):
            raise ApiError(400, f"'{name}' is not supported by tinylm.", name, "unsupported_parameter")
    if doc.get("suffix") is not None:
        raise ApiError(400, "'suffix' is not supported by tinylm.", "suffix", "unsupported_parameter")
    fmt = doc.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise ApiError(
            400,
            "tinylm writes plain text only: response_format must be {'type': 'text'}.",
            "response_format",
            "unsupported_parameter",
        )
    tool_choice = doc.get("tool_choice")
    if tool_choice is not None and tool_choice not in ("none", "auto"):
        raise ApiError(400, "tinylm cannot call tools.", "tool_choice", "unsupported_parameter")
    stream = doc.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, _type_message("stream", stream, "a boolean"), "stream", "invalid_type")
    include_usage = _stream_options(doc.get("stream_options"), stream)
    n = _integer(doc, "n", 1, low=1, high=MAX_N)
    best_of = doc.get("best_of")
    if best_of is not None and best_of != n:
        raise ApiError(
            400, "'best_of' other than n is not supported by tinylm.", "best_of", "unsupported_parameter"
        )
    echo = doc.get("echo", False) if kind == "text" else False
    if not isinstance(echo, bool):
        raise ApiError(400, _type_message("echo", echo, "a boolean"), "echo", "invalid_type")
    sampling = _sampling(doc, kind, max(p.counted for p in prompts))
    return CompletionRequest(kind, model, prompts, n, sampling, stream, include_usage, echo)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[Prompt, ...]
    base64: bool  # encoding_format "base64" (the openai SDK's default) rather than "float"
    dimensions: int | None

    @property
    def prompt_tokens(self) -> int:
        return sum(p.counted for p in self.inputs)


def parse_embedding_request(body: bytes, vocabulary: tuple[str, ...], size: int) -> EmbeddingRequest:
    """Validate a `/v1/embeddings` body; `size` is the most `dimensions` the model has."""
    doc = _json_object(body)
    model = _model_name(doc)
    inputs = _text_prompts(doc, "input", vocabulary)
    if any(not p.tokens for p in inputs):
        raise ApiError(
            400, "Invalid 'input': every input must contain at least one token.", "input", "invalid_value"
        )
    fmt = doc.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format': {fmt!r}; supported: 'float', 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    dimensions = _integer(doc, "dimensions", None, low=1, high=size)
    return EmbeddingRequest(model, inputs, fmt == "base64", dimensions)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request ({exc}). The OpenAI API expects a JSON "
            "payload.",
        ) from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(doc).__name__}.")
    return doc


def _model_name(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    if model is None:
        raise ApiError(400, "Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise ApiError(400, _type_message("model", model, "a string"), "model", "invalid_type")
    return model


def _type_message(name: str, value: Any, expected: str) -> str:
    return f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _chat_prompt(doc: dict[str, Any]) -> Prompt:
    messages = doc.get("messages")
    if messages is None:
        raise ApiError(
            400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise ApiError(400, _type_message("messages", messages, "an array"), "messages", "invalid_type")
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            "messages",
            "empty_array",
        )
    counted = 0
    last: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, _type_message(where, message, "an object"), where, "invalid_type")
        role = message.get("role")
        if role not in _ROLES:
            raise ApiError(
                400,
                f"Invalid value for '{where}.role': {role!r}; supported values are: "
                f"{', '.join(sorted(_ROLES))}.",
                f"{where}.role",
                "invalid_value",
            )
        last = tokenize(_content_text(message.get("content"), f"{where}.content", role))
        counted += len(last)
    return Prompt(tuple(last), counted, "")


def _content_text(content: Any, where: str, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""  # an assistant turn that only called tools
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ApiError(
                    400,
                    f"Invalid '{where}[{j}]': tinylm reads text parts only "
                    "({'type': 'text', 'text': ...}).",
                    f"{where}[{j}]",
                    "invalid_value",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise ApiError(
        400, _type_message(where, content, "a string or an array of text parts"), where, "invalid_type"
    )


def _text_prompts(doc: dict[str, Any], field: str, vocabulary: tuple[str, ...]) -> tuple[Prompt, ...]:
    prompt = doc.get(field)
    if prompt is None:
        raise ApiError(400, f"Missing required parameter: '{field}'.", field, "missing_required_parameter")
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt):
        items = [prompt]  # one prompt of token ids
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise ApiError(
            400,
            f"Invalid '{field}': expected a string, an array of strings, or token ids.",
            field,
            "invalid_value",
        )
    out = []
    for item in items:
        if isinstance(item, str):
            tokens = tuple(tokenize(item))
            out.append(Prompt(tokens, len(tokens), item))
        elif isinstance(item, list) and item and all(is_int(t) and 0 <= t < len(vocabulary) for t in item):
            tokens = tuple(vocabulary[t] for t in item)
            out.append(Prompt(tokens, len(tokens), " ".join(tokens)))
        else:
            raise ApiError(
                400,
                f"Invalid '{field}': token ids must be integers in [0, {len(vocabulary)}).",
                field,
                "invalid_value",
            )
    return tuple(out)


def _stream_options(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    if not isinstance(options, dict):
        raise ApiError(
            400, _type_message("stream_options", options, "an object"), "stream_options", "invalid_type"
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise ApiError(
            400,
            _type_message("stream_options.include_usage", include, "a boolean"),
            "stream_options.include_usage",
            "invalid_type",
        )
    return include


def _integer(
    doc: dict[str, Any], name: str, default: int | None, low: int, high: int | None = None
) -> int | None:
    value = doc.get(name)
    if value is None:
        return default
    if not is_int(value):
        raise ApiError(400, _type_message(name, value, "an integer"), name, "invalid_type")
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} "
            "instead.",
            name,
            "integer_below_min_value",
        )
    if high is not None and value > high:
        raise ApiError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} "
            "instead.",
            name,
            "integer_above_max_value",
        )
    return value


def _number(doc: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = doc.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, _type_message(name, value, "a number"), name, "invalid_type")
    if not low <= value <= high:
        raise ApiError(
            400,
            f"Invalid '{name}': expected a value within [{low:g}, {high:g}], but got {value} instead.",
            name,
            "invalid_value",
        )
    return float(value)


def _sampling(doc: dict[str, Any], kind: Kind, prompt_tokens: int) -> Sampling:
    room = MAX_MODEL_LEN - prompt_tokens
    if room < 1:
        raise ApiError(
            400,
            f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your prompt "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the prompt.",
            "messages" if kind == "chat" else "prompt",
            "context_length_exceeded",
        )
    name = "max_completion_tokens" if doc.get("max_completion_tokens") is not None else "max_tokens"
    default = room if kind == "chat" else min(DEFAULT_COMPLETION_MAX_TOKENS, room)
    max_tokens = _integer(doc, name, default, low=1)
    assert max_tokens is not None
    if max_tokens > room:
        raise ApiError(
            400,
            f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
            f"completion). Please reduce the prompt or {name}.",
            name,
            "context_length_exceeded",
        )
    ignore_eos = doc.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(
            400, _type_message("ignore_eos", ignore_eos, "a boolean"), "ignore_eos", "invalid_type"
        )
    min_tokens = _integer(doc, "min_tokens", 0, low=0, high=max_tokens)
    assert min_tokens is not None
    stop = doc.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(s for s in stop if s)
    else:
        raise ApiError(
            400,
            "Invalid 'stop': expected a string or an array of at most 4 strings.",
            "stop",
            "invalid_value",
        )
    seed = doc.get("seed")
    if seed is not None and not is_int(seed):
        raise ApiError(400, _type_message("seed", seed, "an integer"), "seed", "invalid_type")
    return Sampling(
        logprobs=_logprobs(doc, kind),
        max_tokens=max_tokens,
        min_tokens=max_tokens if ignore_eos else min_tokens,
        temperature=_number(doc, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(doc, "top_p", 1.0, 0.0, 1.0),
        presence_penalty=_number(doc, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(doc, "frequency_penalty", 0.0, -2.0, 2.0),
        stop=stops,
        seed=seed,
    )


def _logprobs(doc: dict[str, Any], kind: Kind) -> int | None:
    """Chat: `logprobs: true` and `top_logprobs` 0..20; completions: `logprobs` 0..5 (the
    number of alternatives). None when not asked for."""
    if kind == "text":
        return _integer(doc, "logprobs", None, low=0, high=5)
    wanted = doc.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, _type_message("logprobs", wanted, "a boolean"), "logprobs", "invalid_type")
    top = _integer(doc, "top_logprobs", None, low=0, high=20)
    if top is not None and not wanted:
        raise ApiError(
            400, "'top_logprobs' is only allowed when 'logprobs' is true.", "top_logprobs", "invalid_value"
        )
    return (top or 0) if wanted else None


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs`, in OpenAI's shape."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def text_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """A completion choice's (or chunk's) `logprobs`; `offset`: where the first token starts
    in the choice's text."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }


def stream_chunk(
    obj: str,
    ident: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: list[dict[str, Any]],
    with_usage: bool,
) -> dict[str, Any]:
    """One streamed object (`chat.completion.chunk` or `text_completion`); with
    `include_usage` every chunk carries `usage: null` until the last, as OpenAI sends them."""
    chunk: dict[str, Any] = {
        "id": ident,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
    }
    if with_usage:
        chunk["usage"] = None
    return chunk
