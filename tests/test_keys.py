from __future__ import annotations

import json
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.errors import ConfigError
from geopin.keys import KeyNotFound, KeyStore, presented_key

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _store(tmp_path: Path) -> KeyStore:
    return KeyStore.load(tmp_path / "keys.json")


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def _valid_entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "key_id": "0123456789abcdef",
        "tenant": "acme",
        "name": None,
        "created_at": "2026-01-02T03:04:05Z",
        "revoked_at": None,
        "sha256": "0" * 64,
    }
    entry.update(overrides)
    return entry


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.entries() == ()
    assert store.authenticate("gpk_0123456789abcdef_" + "a" * 43) is None


def test_create_list_revoke_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry, key = store.create("acme-de", name="ci runner", now=T0)
    other, other_key = store.create("globex")
    store.save()

    loaded = KeyStore.load(tmp_path / "keys.json")
    assert loaded.entries() == store.entries()
    assert loaded.authenticate(key) == entry
    assert loaded.authenticate(key).tenant == "acme-de"  # type: ignore[union-attr]
    assert loaded.authenticate(other_key).key_id == other.key_id  # type: ignore[union-attr]
    assert entry.created_at == T0 and entry.name == "ci runner" and entry.active

    revoked = loaded.revoke(entry.key_id, now=T0.replace(hour=9))
    loaded.save()
    again = KeyStore.load(tmp_path / "keys.json")
    assert again.authenticate(key) is None
    assert again.authenticate(other_key) is not None
    assert again.entries()[0].revoked_at == revoked.revoked_at == T0.replace(hour=9)
    # Revoking twice keeps the first time.
    assert again.revoke(entry.key_id, now=T0.replace(hour=10)).revoked_at == T0.replace(hour=9)


def test_a_verified_key_is_remembered_only_until_the_store_changes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry, key = store.create("acme")
    assert store.authenticate(key) == entry
    assert store.authenticate(key) == entry  # now from memory
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert store.authenticate(flipped) is None and store.authenticate(flipped) is None
    store.revoke(entry.key_id, now=T0)
    assert store.authenticate(key) is None  # revoked: refused at once, not remembered
    _, other = store.create("globex")
    assert store.authenticate(other) is not None and store.authenticate(key) is None


def test_key_format(tmp_path: Path) -> None:
    entry, key = _store(tmp_path).create("acme")
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "gpk"
    assert key_id == entry.key_id and len(key_id) == 16 and int(key_id, 16) >= 0
    assert len(secret) == 43


def test_tampered_and_foreign_keys_fail(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry, key = store.create("acme")
    _, other_key = store.create("globex")
    secret = key.split("_", 2)[2]
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert store.authenticate(flipped) is None
    assert store.authenticate(key + "x") is None
    assert store.authenticate(key[:-1]) is None
    assert store.authenticate(key.upper()) is None
    # Another key's secret under this key's id.
    assert store.authenticate(f"gpk_{entry.key_id}_{other_key.split('_', 2)[2]}") is None
    assert store.authenticate(f"gpk_{'f' * 16}_{secret}") is None
    assert store.authenticate(secret) is None
    assert store.authenticate("") is None
    assert store.authenticate("gpk_" + "é" * 60) is None
    assert store.authenticate(key + "a" * 1000) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_only_the_exact_key_authenticates(garbage: str) -> None:
    store = KeyStore("unused.json")
    _, key = store.create("acme")
    assert store.authenticate(key) is not None
    if garbage != key:
        assert store.authenticate(garbage) is None
        assert store.authenticate(key[:20] + garbage) is None or garbage == key[20:]


def test_file_holds_no_secret_and_is_private(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _, key = store.create("acme", name="laptop")
    store.save()
    path = tmp_path / "keys.json"
    text = path.read_text()
    secret = key.split("_", 2)[2]
    assert secret not in text and key not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temporary file left
    document = json.loads(text)
    assert document["version"] == 1
    assert set(document["keys"][0]) == {
        "key_id",
        "tenant",
        "name",
        "created_at",
        "revoked_at",
        "sha256",
    }


def test_save_replaces_a_file_with_looser_permissions(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.json", {"version": 1, "keys": []})
    path.chmod(0o644)
    store = KeyStore.load(path)
    store.create("acme")
    store.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_into_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "nowhere" / "keys.json")
    store.create("acme")
    with pytest.raises(ConfigError, match="nowhere/keys.json: cannot write keys file"):
        store.save()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"version": 1, "keys": [\n  {"key_id": }\n]}', r"keys\.json:2:14: invalid JSON"),
        ([], r"keys\.json: expected a JSON object"),
        ({"version": 2, "keys": []}, r"keys\.json: version: expected 1, found 2"),
        ({"version": 1}, r"keys\.json: keys: expected a list, found null"),
        ({"version": 1, "keys": [], "extra": 1}, r"unknown field 'extra'"),
        ({"version": 1, "keys": ["x"]}, r"keys\[0\]: expected an object, found a string"),
        (
            {"version": 1, "keys": [_valid_entry(tenant="")]},
            r"keys\[0\]\.tenant: expected a tenant name, found ''",
        ),
        (
            {"version": 1, "keys": [_valid_entry(key_id="XYZ")]},
            r"keys\[0\]\.key_id: expected 16 lower-case hex digits",
        ),
        (
            {"version": 1, "keys": [_valid_entry(sha256="abc")]},
            r"keys\[0\]\.sha256: expected 64 lower-case hex digits",
        ),
        (
            {"version": 1, "keys": [_valid_entry(created_at="2026-01-02T03:04:05")]},
            r"keys\[0\]\.created_at: expected an ISO 8601 time with a zone",
        ),
        (
            {"version": 1, "keys": [_valid_entry(revoked_at=5)]},
            r"keys\[0\]\.revoked_at: expected an ISO 8601 time with a zone, found 5",
        ),
        (
            {"version": 1, "keys": [_valid_entry(name=3)]},
            r"keys\[0\]\.name: expected a string or null",
        ),
        (
            {"version": 1, "keys": [{k: v for k, v in _valid_entry().items() if k != "sha256"}]},
            r"keys\[0\]: missing field 'sha256'",
        ),
        (
            {"version": 1, "keys": [_valid_entry(secret="x")]},
            r"keys\[0\]: unknown field 'secret'",
        ),
        (
            {"version": 1, "keys": [_valid_entry(), _valid_entry()]},
            r"keys\[1\]\.key_id: '0123456789abcdef' repeats keys\[0\]",
        ),
    ],
)
def test_malformed_files_give_precise_errors(
    tmp_path: Path, document: object, message: str
) -> None:
    path = _write(tmp_path / "keys.json", document)
    with pytest.raises(ConfigError, match=message) as err:
        KeyStore.load(path)
    assert str(err.value).startswith(str(path))


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").mkdir()
    with pytest.raises(ConfigError, match="cannot read keys file"):
        KeyStore.load(tmp_path / "keys.json")


def test_invalid_tenant_and_name_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for tenant in ("", " acme", "a b", "x" * 129, "-acme"):
        with pytest.raises(ValueError, match="invalid tenant"):
            store.create(tenant)
    with pytest.raises(ValueError, match="control characters"):
        store.create("acme", name="line\nbreak")
    assert store.entries() == ()


def test_revoking_an_unknown_key_names_it(tmp_path: Path) -> None:
    with pytest.raises(KeyNotFound, match="'feedfacefeedface'"):
        _store(tmp_path).revoke("feedfacefeedface")


def test_concurrent_edits_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"

    def add(i: int) -> None:
        for j in range(5):
            with KeyStore.editing(path) as store:
                store.create(f"tenant-{i}-{j}")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(KeyStore.load(path)) == 20


def test_editing_does_not_save_when_the_change_fails(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(KeyNotFound):
        with KeyStore.editing(path) as store:
            store.create("acme")
            store.revoke("0000000000000000")
    assert not path.exists()


# -- presented keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer gpk_a_b")], "gpk_a_b"),
        ([(b"authorization", b"bearer   gpk_a_b  ")], "gpk_a_b"),
        ([(b"x-api-key", b"gpk_a_b")], "gpk_a_b"),
        ([(b"api-key", b"gpk_a_b")], "gpk_a_b"),
        ([(b"Api-Key", b"gpk_a_b")], "gpk_a_b"),
        ([(b"authorization", b"Basic Zm9vOmJhcg==")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"content-type", b"application/json")], None),
        ([], None),
        # The same key twice (an SDK sending both) is fine; two different keys are ambiguous.
        ([(b"authorization", b"Bearer k1"), (b"x-api-key", b"k1")], "k1"),
        ([(b"authorization", b"Bearer k1"), (b"x-api-key", b"k2")], None),
        ([(b"api-key", b"k1"), (b"api-key", b"k2")], None),
        ([(b"authorization", b"Basic x"), (b"api-key", b"k2")], "k2"),
    ],
)
def test_presented_key(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert presented_key(headers) == expected


def test_presented_key_authenticates_end_to_end(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry, key = store.create("acme")
    for name in (b"x-api-key", b"api-key"):
        presented = presented_key([(b"host", b"geopin"), (name, key.encode())])
        assert presented is not None and store.authenticate(presented) == entry
    bearer = presented_key([(b"authorization", b"Bearer " + key.encode())])
    assert bearer is not None and store.authenticate(bearer) == entry
