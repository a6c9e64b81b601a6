"""The miss path: a client key this gateway's route table does not know yet, read from the store.

Keys reach every gateway with the config (``router.client_keys``), 0.1-0.25 s after they are
written on Redis. So that a key works on every gateway the moment ``meshgate keys create``
printed it, a gateway that shares its store asks the store about a well-formed key whose id
its table does not hold (``KeyGate.authenticate(..., then)``) before refusing it:

* **By its hash.** The collection ``key-digests`` maps the SHA-256 digest of a key (the form
  the store keeps) to its name, written in the same commit as the key's document; the key's
  document (``keys/<name>``) is then read and its digest compared in constant time. A key the
  store does not have costs one read, a known one two. Keys created before the index existed
  have no entry: they are in every gateway's table already.
* **Bounded.** Only well-formed keys whose id is not in the table are looked up (a wrong
  secret for a known id, a malformed key or an unknown bearer never are); a digest the store
  did not have (or had revoked) is not asked again for `ABSENT_S` (at most `ABSENT_MAX` such
  digests, the oldest forgotten first); the lookups of one gateway are at most `RATE` per second
  (a bucket of `BURST`), run on their own `THREADS` threads, at most `IN_FLIGHT` at once; the
  same key asked by many requests at once is one lookup. Past a bound the key is refused as
  unknown (401), as it was before the miss path existed, until the config brings it.
* **Never reviving a revoked key.** A key found is adopted only for the route table it was
  looked up against (``KeyGate``'s remembered callers, forgotten at every table swap); a
  table swap while the lookup was in flight discards its answer (it may predate the change),
  and the table's own entry for an id always wins over the store's. A revocation thus
  reaches every gateway as fast as any config change, adopted keys included.
"""

from __future__ import annotations

from gateway.store import Store
from router.client_keys import ClientKey

__all__ = ["DIGESTS", "KEYS", "fetch_key"]

KEYS = "keys"  # the keys' documents, by name
DIGESTS = "key-digests"  # key digest -> {"name": the key's name}


def fetch_key(store: Store, key_digest: str) -> ClientKey | None:
    """The key whose digest is `key_digest`, as the store has it now (None: no such key). The
    caller compares the digest (constant time) and the id: the index may name a key created
    again under the same name since."""
    ref = store.get(DIGESTS, key_digest)
    if ref is None:
        return None
    doc = store.get(KEYS, ref["name"])
    return None if doc is None else ClientKey.from_dict(doc)
