"""Signed checkpoints of the audit log: C2SP tlog-checkpoint bodies in C2SP signed notes.

A checkpoint commits to the log's origin, size and Merkle root
(https://c2sp.org/tlog-checkpoint)::

    geopin.example/audit
    1234
    <base64 root>

and is signed as a note (https://c2sp.org/signed-note) with Ed25519: the body, a blank line,
then ``— <key name> <base64(key id || signature)>``. The key id is the first four bytes of
SHA-256(name || 0x0A || 0x01 || public key). Keys are kept in the text forms of Go's
``golang.org/x/mod/sumdb/note``, so its tools can check geopin's notes:

    verifier key   <name>+<hex key id>+<base64(0x01 || public key)>
    signing key    PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || 32-byte seed)>

``VerifierKey.open`` raises ``VerificationError`` naming exactly what is wrong (the note's
shape, a missing signature, a different key with the same name, a signature that does not
verify, a malformed body). Signatures by other keys are ignored, as the note spec requires.
geopin writes no extension lines after the root, and refuses bodies that have them. The key
name is not required to equal the checkpoint origin (the spec says it SHOULD); geopin's keygen
names the key after the origin.

Beyond the shared contract: ``SigningKey.sign_text`` / ``VerifierKey.open_text`` sign and open
an arbitrary note text, ``unverified_checkpoint`` reads a note's body without a key (for
display only). The checkpoint file outside the database is in ``checkpoint_file.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from geopin.errors import ConfigError, VerificationError

__all__ = [
    "Checkpoint",
    "SigningKey",
    "VerifierKey",
    "unverified_checkpoint",
]

_ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_NOTE_BYTES = 1 << 20
_MAX_SIGNATURES = 100  # Go's note.Open limit; the spec asks for at least 16
_HASH_SIZE = 32
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX_ID = re.compile(r"[0-9a-fA-F]{8}")


def _valid_name(name: object) -> bool:
    # signed-note: non-empty, no Unicode spaces, no "+"; control characters cannot appear in
    # a note at all.
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and _CONTROL.search(name) is None
        and "\x7f" not in name
    )


def _key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: no stray characters and only the canonical encoding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise ValueError(f"{what} is not canonical base64")
    return raw


# ---------------------------------------------------------------------------------------------
# The checkpoint body


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and its RFC 9162 root hash."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise ValueError("checkpoint origin must be a non-empty string")
        if "\n" in self.origin or _CONTROL.search(self.origin):
            raise ValueError(f"checkpoint origin {self.origin!r} contains a control character")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"checkpoint size must be a non-negative integer, got {self.size!r}")
        if not isinstance(self.root, bytes | bytearray) or len(self.root) != _HASH_SIZE:
            raise ValueError(f"checkpoint root must be {_HASH_SIZE} bytes")
        object.__setattr__(self, "root", bytes(self.root))

    def body(self) -> str:
        """The note text: origin, size and base64 root, each on its own line."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body; ``ValueError`` says which line is wrong and how."""
        if not text.endswith("\n"):
            raise ValueError("checkpoint body does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ValueError(
                f"checkpoint body has {len(lines)} line(s), expected origin, size and root"
            )
        if len(lines) > 3:
            raise ValueError(f"checkpoint body has {len(lines) - 3} unexpected extension line(s)")
        origin, size_text, root_text = lines
        if not origin:
            raise ValueError("checkpoint line 1 (origin) is empty")
        if not _DECIMAL.fullmatch(size_text):
            raise ValueError(f"checkpoint line 2 (size) {size_text!r} is not a decimal number")
        root = _b64decode(root_text, f"checkpoint line 3 (root) {root_text!r}")
        if len(root) != _HASH_SIZE:
            raise ValueError(f"checkpoint line 3 (root) is {len(root)} bytes, not {_HASH_SIZE}")
        return cls(origin, int(size_text), root)


# ---------------------------------------------------------------------------------------------
# Notes


@dataclass(frozen=True)
class _Signature:
    line: int
    name: str
    key_id: bytes
    signature: bytes


def split_note(note: str | bytes) -> tuple[str, list[_Signature]]:
    """The note's text and its signature lines, or ``ValueError`` naming the defect."""
    if isinstance(note, bytes | bytearray):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"note is not valid UTF-8 (byte {exc.start})") from exc
    if not isinstance(note, str):
        raise ValueError(f"note must be text, not {type(note).__name__}")
    if len(note.encode("utf-8", "surrogatepass")) > _MAX_NOTE_BYTES:
        raise ValueError(f"note is larger than {_MAX_NOTE_BYTES} bytes")
    bad = _CONTROL.search(note)
    if bad:
        raise ValueError(f"note contains control character U+{ord(bad.group()):04X}")
    if not note.endswith("\n"):
        raise ValueError("note does not end with a newline (truncated?)")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise ValueError("note has no blank line between its text and its signatures")
    text, lines = note[: cut + 1], note[cut + 2 :].split("\n")[:-1]
    if not lines:
        raise ValueError("note has no signature lines")
    if len(lines) > _MAX_SIGNATURES:
        raise ValueError(f"note has {len(lines)} signature lines, more than {_MAX_SIGNATURES}")
    first_line = text.count("\n") + 2
    signatures = []
    for number, line in enumerate(lines, start=first_line):
        name, _, blob_text = line.removeprefix(SIG_PREFIX).partition(" ")
        if not line.startswith(SIG_PREFIX) or not _valid_name(name) or " " in blob_text:
            raise ValueError(f"note line {number} is not a signature line: {line[:60]!r}")
        blob = _b64decode(blob_text, f"signature on note line {number}")
        if len(blob) < 5:
            raise ValueError(f"signature on note line {number} is too short ({len(blob)} bytes)")
        signatures.append(_Signature(number, name, blob[:4], blob[4:]))
    return text, signatures


def unverified_checkpoint(note: str) -> Checkpoint:
    """The checkpoint a note claims, WITHOUT checking any signature: for display and routing
    only (``make_bundle`` reads the tree size this way). ``ValueError`` if malformed."""
    text, _ = split_note(note)
    return Checkpoint.from_body(text)


# ---------------------------------------------------------------------------------------------
# Keys


def _read_key_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read {what}: {reason}") from exc


@dataclass(frozen=True)
class VerifierKey:
    """A trusted public key: checks notes signed by the matching ``SigningKey``."""

    name: str
    key_id: bytes
    public_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise ValueError(f"invalid key name {self.name!r}: empty, or has a space or '+'")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        if self.key_id != _key_id(self.name, self.public_key):
            raise ValueError(
                f"key id {bytes(self.key_id).hex()} does not match the key"
                f" (expected {_key_id(self.name, self.public_key).hex()})"
            )

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> VerifierKey:
        return cls(name, _key_id(name, public_key), public_key)

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``<name>+<hex id>+<base64(0x01||key)>``; ``ValueError`` says what is wrong."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or any(ch.isspace() for ch in text.strip()):
            raise ValueError("not a verifier key of the form <name>+<hex key id>+<base64 key>")
        name, id_text, key_text = parts
        if not _valid_name(name):
            raise ValueError(f"invalid key name {name!r}")
        if not _HEX_ID.fullmatch(id_text):
            raise ValueError(f"key id {id_text!r} is not 8 hex digits")
        key = _b64decode(key_text, "the key")
        if not key or key[0] != _ALG_ED25519:
            raise ValueError(f"unsupported key type {key[:1].hex() or 'none'} (only 01, Ed25519)")
        if len(key) != 33:
            raise ValueError(f"the Ed25519 public key is {len(key) - 1} bytes, not 32")
        return cls(name, bytes.fromhex(id_text), key[1:])

    @classmethod
    def load(cls, path_or_text: str | Path) -> VerifierKey:
        """Load from a file, or from the key text itself; ``ConfigError`` on a bad key."""
        if isinstance(path_or_text, Path) or os.path.isfile(path_or_text.strip()):
            path = Path(path_or_text if isinstance(path_or_text, Path) else path_or_text.strip())
            source, text = str(path), _read_key_file(path, "verifier key")
        else:
            source, text = "verifier key", path_or_text
            if "+" not in text:
                raise ConfigError(f"{text!r} is neither a readable file nor a verifier key")
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    def text(self) -> str:
        key = base64.b64encode(bytes([_ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{key}"

    def open_text(self, note: str) -> str:
        """The note's text once this key's signature on it verifies; else VerificationError."""
        try:
            text, signatures = split_note(note)
        except ValueError as exc:
            raise VerificationError(f"malformed note: {exc}") from exc
        mine = [s for s in signatures if s.name == self.name and s.key_id == self.key_id]
        if not mine:
            impostors = [s for s in signatures if s.name == self.name]
            if impostors:
                raise VerificationError(
                    f"note is signed by a different key named {self.name!r}"
                    f" (key id {impostors[0].key_id.hex()}, trusted key id {self.key_id.hex()})"
                )
            names = ", ".join(sorted({repr(s.name) for s in signatures}))
            raise VerificationError(f"note has no signature by {self.name!r}; signed by {names}")
        sig = mine[0]  # as in Go's note.Open, the first signature by the key decides
        where = f"signature by {self.name!r} on note line {sig.line}"
        if len(sig.signature) != 64:
            raise VerificationError(f"{where} is {len(sig.signature)} bytes, not 64 (truncated?)")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                sig.signature, text.encode("utf-8")
            )
        except InvalidSignature:
            raise VerificationError(
                f"{where} does not verify: the note text or the signature was altered"
            ) from None
        return text

    def open(self, note: str) -> Checkpoint:
        """Verify the signature, then parse the checkpoint; VerificationError says what failed."""
        text = self.open_text(note)
        try:
            return Checkpoint.from_body(text)
        except ValueError as exc:
            raise VerificationError(f"signed note is not a checkpoint: {exc}") from exc


@dataclass(frozen=True)
class SigningKey:
    """The log's private Ed25519 key and its name (the origin of the checkpoints it signs)."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise ValueError(f"invalid key name {self.name!r}: empty, or has a space or '+'")

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01||seed)>``; ``ValueError`` if bad."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValueError("not a signing key of the form PRIVATE+KEY+<name>+<id>+<key>")
        if any(ch.isspace() for ch in text.strip()):
            raise ValueError("signing key contains whitespace")
        _, _, name, id_text, key_text = parts
        if not _valid_name(name):
            raise ValueError(f"invalid key name {name!r}")
        if not _HEX_ID.fullmatch(id_text):
            raise ValueError(f"key id {id_text!r} is not 8 hex digits")
        key = _b64decode(key_text, "the key")
        if not key or key[0] != _ALG_ED25519:
            raise ValueError(f"unsupported key type {key[:1].hex() or 'none'} (only 01, Ed25519)")
        if len(key) != 33:
            raise ValueError(f"the Ed25519 seed is {len(key) - 1} bytes, not 32")
        signing = cls(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
        if signing.verifier().key_id != bytes.fromhex(id_text):
            raise ValueError(f"key id {id_text} does not match the key")
        return signing

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        path = Path(path)
        try:
            return cls.parse(_read_key_file(path, "signing key"))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def text(self) -> str:
        """The secret key in its text form. Keep it secret: ``save`` writes it mode 0600."""
        seed = self.private_key.private_bytes_raw()
        key = base64.b64encode(bytes([_ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier().key_id.hex()}+{key}"

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the key, mode 0600, durably. Refuses to replace a file unless ``overwrite``."""
        path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_TRUNC if overwrite else os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
                os.write(fd, (self.text() + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileExistsError as exc:
            raise ConfigError(f"{path}: refusing to overwrite an existing key file") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write signing key: {exc.strerror}") from exc

    def verifier(self) -> VerifierKey:
        public = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return VerifierKey.from_public_key(self.name, public)

    def sign_text(self, text: str) -> str:
        """Sign any note text (non-empty, ending in a newline) and return the signed note."""
        if not text.endswith("\n") or text == "\n" or _CONTROL.search(text):
            raise ValueError("note text must end with a newline and hold no control characters")
        signature = self.private_key.sign(text.encode("utf-8"))
        blob = base64.b64encode(self.verifier().key_id + signature).decode()
        return f"{text}\n{SIG_PREFIX}{self.name} {blob}\n"

    def sign(self, cp: Checkpoint) -> str:
        """The whole signed note for ``cp``."""
        return self.sign_text(cp.body())
