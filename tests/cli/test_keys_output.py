"""`meshgate keys`: what list and revoke print for the cases without a table to show."""

from __future__ import annotations

from argparse import Namespace

from gateway.cli.keys_cmd import _list, _revoke


class _Client:
    """The admin API as the key commands call it: GET and DELETE of /v1/keys[/name]."""

    def __init__(self, keys: list[dict]) -> None:
        self.keys = {k["name"]: k for k in keys}
        self.deleted: list[str] = []

    def get(self, path: str) -> dict:
        if path == "/v1/keys":
            return {"keys": list(self.keys.values())}
        return self.keys[path.removeprefix("/v1/keys/")]

    def request(self, method: str, path: str) -> None:
        assert method == "DELETE"
        self.deleted.append(path)


def test_list_without_keys_says_the_routes_are_open(capsys):
    _list(Namespace(json=False), _Client([]))
    out = capsys.readouterr().out
    assert "no client keys" in out and "meshgate keys create NAME" in out


def test_revoking_a_revoked_key_says_so_and_writes_nothing(capsys):
    client = _Client([{"name": "old", "revoked": True, "revoked_at": 1.7e9}])
    _revoke(Namespace(name="old", json=False), client)
    assert "already revoked" in capsys.readouterr().out and client.deleted == []
    client = _Client([{"name": "live", "revoked": False, "revoked_at": None}])
    _revoke(Namespace(name="live", json=False), client)
    assert "revoked key live" in capsys.readouterr().out and client.deleted == ["/v1/keys/live"]
