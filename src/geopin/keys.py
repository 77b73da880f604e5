"""Router API keys: they identify the tenant a request comes from.

A key reads ``gpk_<key id>_<secret>``: a random 8-byte key id in hex, which is public (it is
how a key is listed and revoked), and a 32-byte random secret. The keys file stores, per key,
its id, tenant, name, creation and revocation times and the SHA-256 of the whole key; never the
key itself.

SHA-256 rather than a slow password hash (bcrypt, scrypt, argon2) on purpose: a slow hash
protects guessable secrets, and 256 random bits cannot be guessed whatever the hash costs. A
single fast hash keeps authentication cheap enough for every request.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geopin.errors import ConfigError
from geopin.files import fsync_directory

DEFAULT_KEYS_FILE = "geopin-keys.json"
KEYS_FILE_ENV = "GEOPIN_KEYS_FILE"
FORMAT_VERSION = 1

_PREFIX = "gpk"
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32)
_MAX_KEY_LENGTH = 128  # longer input is not a key; refuse it before hashing it
_MAX_VERIFIED = 4096  # keys remembered as verified, per store
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_HASH = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("key_id", "tenant", "name", "created_at", "revoked_at", "sha256")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One router key as stored: everything but the key itself."""

    key_id: str
    tenant: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    sha256: str  # hex SHA-256 of the whole presented key

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyNotFound(LookupError):
    """No key with that id in the store."""


class KeyStore:
    """The keys of one keys file, indexed by key id."""

    def __init__(self, path: str | Path, entries: Sequence[KeyEntry] = ()) -> None:
        self.path = Path(path)
        self._by_id: dict[str, KeyEntry] = {e.key_id: e for e in entries}
        # Keys already verified, so a client's next request costs one dict lookup. Only active
        # keys of this store are kept (a client cannot fill it), in memory only, and it is
        # emptied by any change to the store; a reload of the keys file makes a new store.
        self._verified: dict[str, KeyEntry] = {}

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        """Read a keys file; a missing file is an empty store.

        Raises ``ConfigError`` naming the file (and the line for JSON syntax errors, the key's
        index and field otherwise) when the file cannot be used.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read keys file: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        return cls(path, _parse(path, data))

    @classmethod
    @contextmanager
    def editing(cls, path: str | Path) -> Iterator[KeyStore]:
        """Load, let the caller change, and save the store under an exclusive lock.

        The lock (on ``<path>.lock``) stops two concurrent ``geopin keys`` commands from losing
        one another's change; readers need no lock since saving replaces the file atomically.
        """
        path = Path(path)
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            store = cls.load(path)
            yield store
            store.save()
        finally:
            os.close(fd)  # closing releases the lock

    def authenticate(self, presented: str) -> KeyEntry | None:
        """The active key ``presented`` is, or None. One dict lookup; the first time a key is
        seen, one SHA-256 as well."""
        known = self._verified.get(presented)
        if known is not None:
            return known
        key_id = _key_id_of(presented)
        if key_id is None:
            return None
        entry = self._by_id.get(key_id)
        if entry is None:
            return None
        digest = hashlib.sha256(presented.encode("ascii")).hexdigest()
        if not hmac.compare_digest(digest, entry.sha256) or entry.revoked_at is not None:
            return None
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[presented] = entry
        return entry

    def create(
        self, tenant: str, name: str | None = None, now: datetime | None = None
    ) -> tuple[KeyEntry, str]:
        """Add a new key for ``tenant``; returns its entry and the key, which is not kept."""
        if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
            raise ValueError(
                f"invalid tenant {tenant!r}: 1-128 letters, digits and . _ : @ -, "
                "starting with a letter or digit"
            )
        name = _check_name(name)
        key_id = secrets.token_hex(8)
        while key_id in self._by_id:  # 64 random bits: practically never taken
            key_id = secrets.token_hex(8)
        key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        entry = KeyEntry(
            key_id=key_id,
            tenant=tenant,
            name=name,
            created_at=_now(now),
            revoked_at=None,
            sha256=hashlib.sha256(key.encode("ascii")).hexdigest(),
        )
        self._by_id[key_id] = entry
        self._verified.clear()
        return entry, key

    def revoke(self, key_id: str, now: datetime | None = None) -> KeyEntry:
        """Revoke a key by id. Revoking a revoked key keeps its first revocation time."""
        entry = self._by_id.get(key_id)
        if entry is None:
            raise KeyNotFound(f"no key with id {key_id!r} in {self.path}")
        if entry.revoked_at is None:
            entry = replace(entry, revoked_at=_now(now))
            self._by_id[key_id] = entry
            self._verified.clear()
        return entry

    def entries(self) -> tuple[KeyEntry, ...]:
        """Every key, oldest first."""
        return tuple(sorted(self._by_id.values(), key=lambda e: (e.created_at, e.key_id)))

    def save(self) -> None:
        """Write the file atomically (a temporary file renamed over it), readable by owner only."""
        document = {"version": FORMAT_VERSION, "keys": [_dump(e) for e in self.entries()]}
        text = json.dumps(document, indent=2) + "\n"
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write keys file: {exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)  # mkstemp's default, made explicit
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise ConfigError(f"{self.path}: cannot write keys file: {exc}") from exc
        fsync_directory(directory)

    def __len__(self) -> int:
        return len(self._by_id)


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The router key a client presented in ASGI raw headers, or None.

    Accepted: ``Authorization: Bearer <key>`` (OpenAI SDKs), ``x-api-key: <key>`` (Anthropic
    SDKs) and ``api-key: <key>`` (Azure SDKs). When several are present and disagree the
    request is ambiguous and no key is returned, rather than guessing which one was meant.
    """
    found: str | None = None
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"authorization":
            scheme, _, rest = raw_value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                continue
            value = rest.strip()
        elif name == b"x-api-key" or name == b"api-key":
            value = raw_value.strip()
        else:
            continue
        if not value:
            continue
        key = value.decode("latin-1")
        if found is not None and key != found:
            return None
        found = key
    return found


# -- helpers ----------------------------------------------------------------------------------


def _key_id_of(presented: str) -> str | None:
    if len(presented) > _MAX_KEY_LENGTH or not presented.isascii():
        return None
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != _PREFIX or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id


def _now(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("key times must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=0)


def _check_name(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    if len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("key name must be at most 200 characters without control characters")
    return name


def _dump(entry: KeyEntry) -> dict[str, Any]:
    return {
        "key_id": entry.key_id,
        "tenant": entry.tenant,
        "name": entry.name,
        "created_at": entry.created_at.isoformat().replace("+00:00", "Z"),
        "revoked_at": entry.revoked_at.isoformat().replace("+00:00", "Z")
        if entry.revoked_at
        else None,
        "sha256": entry.sha256,
    }


def _parse(path: Path, data: Any) -> list[KeyEntry]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with 'version' and 'keys'")
    unknown = sorted(set(data) - {"version", "keys"})
    if unknown:
        raise ConfigError(f"{path}: unknown field {unknown[0]!r} (expected 'version', 'keys')")
    if data.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: version: expected {FORMAT_VERSION}, found {data.get('version')!r}"
        )
    keys = data.get("keys")
    if not isinstance(keys, list):
        raise ConfigError(f"{path}: keys: expected a list, found {_kind(keys)}")
    entries: list[KeyEntry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(keys):
        entry = _parse_entry(f"{path}: keys[{index}]", item)
        if entry.key_id in seen:
            raise ConfigError(
                f"{path}: keys[{index}].key_id: {entry.key_id!r} repeats keys[{seen[entry.key_id]}]"
            )
        seen[entry.key_id] = index
        entries.append(entry)
    return entries


def _parse_entry(where: str, item: Any) -> KeyEntry:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object, found {_kind(item)}")
    for field in _FIELDS:
        if field not in item:
            raise ConfigError(f"{where}: missing field {field!r}")
    unknown = sorted(set(item) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")

    def text(field: str, pattern: re.Pattern[str], expected: str) -> str:
        value = item[field]
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ConfigError(f"{where}.{field}: expected {expected}, found {value!r}")
        return value

    key_id = text("key_id", _KEY_ID, "16 lower-case hex digits")
    tenant = text("tenant", _TENANT, "a tenant name")
    sha256 = text("sha256", _HASH, "64 lower-case hex digits")
    name = item["name"]
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.name: expected a string or null, found {_kind(name)}")
    created_at = _parse_time(f"{where}.created_at", item["created_at"])
    if created_at is None:
        raise ConfigError(f"{where}.created_at: expected a timestamp, found null")
    revoked_at = _parse_time(f"{where}.revoked_at", item["revoked_at"])
    return KeyEntry(key_id, tenant, name, created_at, revoked_at, sha256)


def _parse_time(where: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.astimezone(UTC)
    raise ConfigError(f"{where}: expected an ISO 8601 time with a zone, found {value!r}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
