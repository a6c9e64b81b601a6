"""tinylm: the reference OpenAI-compatible LLM server and the small word n-gram model behind it.

`load_tinylm(version)` trains a version from the shipped public-domain text;
`models.llm.server` serves it over the OpenAI HTTP API with streaming, usage and fault knobs.
"""

from models.llm._generate import Generation, Sampling, rng_for
from models.llm._tokens import count_tokens, join_piece, tokenize
from models.llm._zoo import MODEL_ID, VERSIONS, TinyLM, held_out_perplexity, load_tinylm

__all__ = [
    "MODEL_ID",
    "VERSIONS",
    "Generation",
    "Sampling",
    "TinyLM",
    "count_tokens",
    "held_out_perplexity",
    "join_piece",
    "load_tinylm",
    "rng_for",
    "tokenize",
]
