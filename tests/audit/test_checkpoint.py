"""geopin.audit.checkpoint: C2SP checkpoints, Ed25519 signed notes, key files, the note file."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.audit.checkpoint import Checkpoint, SigningKey, VerifierKey, unverified_checkpoint
from geopin.audit.checkpoint_file import CheckpointFile, TornEntryError
from geopin.audit.merkle import EMPTY_ROOT, leaf_hash
from geopin.errors import AuditError, ConfigError, GeopinError, VerificationError

# The worked example of golang.org/x/mod/sumdb/note (note.go package documentation and
# note_test.go), the reference implementation of the signed-note format. Ed25519 signing is
# deterministic, so signing the same text with the same key must give these exact bytes.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)

ORIGIN = "geopin.example/audit"
KEY = SigningKey.generate(ORIGIN)


def make_checkpoint(**overrides) -> Checkpoint:
    values = {"origin": ORIGIN, "size": 42, "root": leaf_hash(b"root")} | overrides
    return Checkpoint(**values)


def _replace_signature(note: str, new_blob: str) -> str:
    head, _, last = note[:-1].rpartition("\n")
    name_part = last.rsplit(" ", 1)[0]
    return f"{head}\n{name_part} {new_blob}\n"


def _blob(note: str) -> bytes:
    return base64.b64decode(note[:-1].rsplit(" ", 1)[1])


# ------------------------------------------------------------------------------------------------
# Known answers from the reference implementation


def test_go_reference_key_and_signature():
    signing = SigningKey.parse(GO_SKEY)
    assert signing.name == "PeterNeumann"
    assert signing.text() == GO_SKEY
    verifier = signing.verifier()
    assert verifier.text() == GO_VKEY
    assert verifier.key_id.hex() == "c74f20a3"
    assert signing.sign_text(GO_TEXT) == GO_NOTE
    assert VerifierKey.parse(GO_VKEY).open_text(GO_NOTE) == GO_TEXT


def test_go_reference_note_tampered_text_fails():
    tampered = GO_NOTE.replace("problem is", "problem was")
    with pytest.raises(VerificationError, match="does not verify"):
        VerifierKey.parse(GO_VKEY).open_text(tampered)


# ------------------------------------------------------------------------------------------------
# Checkpoint bodies


def test_body_format():
    cp = make_checkpoint(size=1234, root=bytes(range(32)))
    assert cp.body() == (
        "geopin.example/audit\n1234\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    )
    assert Checkpoint.from_body(cp.body()) == cp


def test_empty_tree_checkpoint():
    cp = make_checkpoint(size=0, root=EMPTY_ROOT)
    assert cp.body().split("\n")[1] == "0"
    assert KEY.verifier().open(KEY.sign(cp)) == cp


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("o\n1\n" + base64.b64encode(bytes(32)).decode(), "does not end with a newline"),
        ("o\n1\n", "2 line"),
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\next\n", "1 unexpected extension"),
        ("\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 1 .origin. is empty"),
        ("o\n007\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 2 .size. '007'"),
        ("o\n+7\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 2 .size."),
        ("o\n-7\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 2 .size."),
        ("o\n 7\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 2 .size."),
        ("o\n\u0663\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 2 .size."),
        ("o\n1_0\n" + base64.b64encode(bytes(32)).decode() + "\n", "line 2 .size."),
        ("o\n1\nnot base64!\n", "line 3 .root. 'not base64!' is not valid base64"),
        ("o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n", "31 bytes, not 32"),
        ("o\n1\n" + base64.b64encode(bytes(33)).decode() + "\n", "33 bytes, not 32"),
        # the same 32 bytes with non-zero padding bits: a second spelling of one root
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "not canonical base64"),
    ],
)
def test_malformed_bodies(body, reason):
    with pytest.raises(ValueError, match=reason):
        Checkpoint.from_body(body)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"origin": ""}, "non-empty"),
        ({"origin": "a\nb"}, "control character"),
        ({"origin": "a\tb"}, "control character"),
        ({"size": -1}, "non-negative"),
        ({"size": True}, "non-negative"),
        ({"size": "5"}, "non-negative"),
        ({"root": bytes(31)}, "32 bytes"),
        ({"root": "00" * 32}, "32 bytes"),
    ],
)
def test_invalid_checkpoints(overrides, reason):
    with pytest.raises(ValueError, match=reason):
        make_checkpoint(**overrides)


_origins = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30
).filter(lambda s: "\n" not in s)


@settings(max_examples=100)
@given(_origins, st.integers(0, 2**63), st.binary(min_size=32, max_size=32))
def test_sign_then_open_round_trips(origin, size, root_hash):
    cp = Checkpoint(origin, size, root_hash)
    note = KEY.sign(cp)
    assert note.startswith(cp.body() + "\n\u2014 " + ORIGIN + " ")
    assert KEY.verifier().open(note) == cp
    assert unverified_checkpoint(note) == cp


# ------------------------------------------------------------------------------------------------
# Opening notes: every failure says what is wrong


def test_wrong_key_with_the_same_name():
    other = SigningKey.generate(ORIGIN)
    note = other.sign(make_checkpoint())
    with pytest.raises(VerificationError, match="different key named 'geopin.example/audit'") as e:
        KEY.verifier().open(note)
    assert other.verifier().key_id.hex() in str(e.value)


def test_foreign_key_name():
    note = SigningKey.generate("someone.else/log").sign(make_checkpoint())
    with pytest.raises(
        VerificationError,
        match="no signature by 'geopin.example/audit'; signed by 'someone.else/log'",
    ):
        KEY.verifier().open(note)


@pytest.mark.parametrize(
    "edit",
    [
        lambda body: body.replace("\n42\n", "\n43\n"),
        lambda body: body.replace(ORIGIN, "geopin.example/other"),
        lambda body: body.replace(body.split("\n")[2], base64.b64encode(bytes(32)).decode()),
    ],
    ids=["size", "origin", "root"],
)
def test_modified_body(edit):
    note = KEY.sign(make_checkpoint())
    body, sigs = note.split("\n\n", 1)
    tampered = edit(body + "\n") + "\n" + sigs
    assert tampered != note
    with pytest.raises(VerificationError, match="does not verify: the note text or the signature"):
        KEY.verifier().open(tampered)


def test_flipped_signature_bit():
    note = KEY.sign(make_checkpoint())
    blob = bytearray(_blob(note))
    blob[10] ^= 1
    with pytest.raises(VerificationError, match="does not verify"):
        KEY.verifier().open(_replace_signature(note, base64.b64encode(blob).decode()))


def test_truncated_signature():
    note = KEY.sign(make_checkpoint())
    blob = _blob(note)
    short = _replace_signature(note, base64.b64encode(blob[:-8]).decode())
    with pytest.raises(VerificationError, match="is 56 bytes, not 64 .truncated"):
        KEY.verifier().open(short)
    # A cut that leaves broken base64 or no final newline is malformed, and says so.
    with pytest.raises(VerificationError, match="signature on note line 5 is not valid base64"):
        KEY.verifier().open(note[:-6] + "\n")
    with pytest.raises(VerificationError, match="does not end with a newline"):
        KEY.verifier().open(note[:-1])
    body_only = note.split("\u2014")[0]
    with pytest.raises(VerificationError, match="no blank line|no signature lines"):
        KEY.verifier().open(body_only)


def test_signatures_by_unknown_keys_are_ignored():
    cp = make_checkpoint()
    ours = KEY.sign(cp)
    theirs = SigningKey.generate("witness.example").sign(cp)
    combined = ours + theirs.split("\n\n", 1)[1]  # our line, then a witness's
    reversed_order = theirs + ours.split("\n\n", 1)[1]
    assert KEY.verifier().open(combined) == cp
    assert KEY.verifier().open(reversed_order) == cp


def test_first_signature_by_the_key_decides():
    cp = make_checkpoint()
    note = KEY.sign(cp)
    good_line = note.split("\n\n", 1)[1]
    blob = bytearray(_blob(note))
    blob[-1] ^= 1
    bad_line = good_line.rsplit(" ", 1)[0] + " " + base64.b64encode(blob).decode() + "\n"
    with pytest.raises(VerificationError, match="line 5 does not verify"):
        KEY.verifier().open(cp.body() + "\n" + bad_line + good_line)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda n: n.replace("\n\n", "\n"), "no blank line"),
        (lambda n: n.replace("\u2014 ", "-- "), "line 5 is not a signature line"),
        (lambda n: n.replace("\u2014 ", "\u2014  "), "not a signature line"),
        (lambda n: n.replace("\n42\n", "\n4\x0072\n"), "control character U\\+0000"),
        (lambda n: n + "\n", "no signature lines"),
        (lambda n: n + "trailing\n", "line 6 is not a signature line"),
    ],
)
def test_malformed_notes(mangle, reason):
    note = mangle(KEY.sign(make_checkpoint()))
    with pytest.raises(VerificationError, match=reason):
        KEY.verifier().open(note)


def test_too_many_signature_lines():
    note = KEY.sign(make_checkpoint())
    extra = SigningKey.generate("w.example").sign(make_checkpoint()).split("\n\n", 1)[1]
    with pytest.raises(VerificationError, match="101 signature lines"):
        KEY.verifier().open(note + extra * 100)


def test_signed_text_that_is_not_a_checkpoint():
    note = KEY.sign_text("hello\nworld\n")
    assert KEY.verifier().open_text(note) == "hello\nworld\n"
    with pytest.raises(VerificationError, match="signed note is not a checkpoint: .*2 line"):
        KEY.verifier().open(note)


def test_notes_as_bytes():
    note = KEY.sign(make_checkpoint())
    assert KEY.verifier().open(note.encode()) == make_checkpoint()
    with pytest.raises(VerificationError, match="not valid UTF-8"):
        KEY.verifier().open(note.encode() + b"\xff\n")


def test_verification_errors_are_geopin_errors():
    assert issubclass(VerificationError, AuditError)
    assert issubclass(TornEntryError, VerificationError)
    assert issubclass(ConfigError, GeopinError)


def test_sign_text_rejects_unsignable_text():
    for text in ["no newline", "\n", "tab\there\n"]:
        with pytest.raises(ValueError, match="must end with a newline"):
            KEY.sign_text(text)


# ------------------------------------------------------------------------------------------------
# Key files


def test_save_and_load_signing_key(tmp_path):
    path = tmp_path / "audit.key"
    KEY.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == KEY.text() + "\n"
    loaded = SigningKey.load(path)
    assert loaded.verifier() == KEY.verifier()
    assert KEY.verifier().open(loaded.sign(make_checkpoint())) == make_checkpoint()
    assert SigningKey.load(str(path)).name == ORIGIN


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "audit.key"
    path.write_text("old")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        KEY.save(path)
    assert path.read_text() == "old"
    KEY.save(path, overwrite=True)
    assert SigningKey.load(path).verifier() == KEY.verifier()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot write signing key"):
        KEY.save(tmp_path / "nope" / "audit.key")


def test_key_repr_hides_the_secret():
    # PRIVATE+KEY+<name>+<key id>+<base64>: the base64 may itself hold "+".
    secret = KEY.text().split("+", 4)[4]
    assert secret and secret not in repr(KEY) and secret not in str(KEY)
    assert KEY.private_key.private_bytes_raw().hex() not in repr(KEY)
    assert "private_key" not in repr(KEY)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "not a signing key"),
        ("garbage", "not a signing key"),
        (GO_VKEY, "not a signing key"),
        (GO_SKEY.replace("c74f20a3", "c74f20a4"), "key id c74f20a4 does not match"),
        (GO_SKEY.replace("c74f20a3", "c74f20"), "not 8 hex digits"),
        (GO_SKEY.replace("+AYEK", "+AoEK"), "unsupported key type 02"),
        (GO_SKEY + "AAAA", "is not valid base64|not 32"),
        (GO_SKEY.replace("PeterNeumann", "Peter Neumann"), "whitespace"),
        (GO_SKEY[:-4], "not valid base64|not 32"),
    ],
)
def test_bad_signing_key_files(tmp_path, content, reason):
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(ConfigError, match=reason) as e:
        SigningKey.load(path)
    assert str(path) in str(e.value)


def test_missing_signing_key_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read signing key: No such file"):
        SigningKey.load(tmp_path / "absent.key")


def test_verifier_key_from_text_file_or_path(tmp_path):
    path = tmp_path / "audit.pub"
    path.write_text(GO_VKEY + "\n")
    expected = VerifierKey.parse(GO_VKEY)
    assert VerifierKey.load(GO_VKEY) == expected
    assert VerifierKey.load(path) == expected
    assert VerifierKey.load(str(path)) == expected
    with pytest.raises(ConfigError, match="neither a readable file nor a verifier key"):
        VerifierKey.load(str(tmp_path / "absent.pub"))
    with pytest.raises(ConfigError, match="cannot read verifier key"):
        VerifierKey.load(tmp_path / "absent.pub")


def test_every_mangling_of_a_key_is_rejected():
    # As in the reference implementation's tests: any strict substring, and any single byte
    # changed, must fail to parse (the key id binds name and key together).
    for text, parse in [(GO_VKEY, VerifierKey.parse), (GO_SKEY, SigningKey.parse)]:
        parse(text)
        for i in range(len(text)):
            for j in range(i + 1, len(text) + 1):
                if (i, j) != (0, len(text)):
                    with pytest.raises(ValueError):
                        parse(text[i:j])
            mangled = text[:i] + chr(ord(text[i]) + 1) + text[i + 1 :]
            with pytest.raises(ValueError):
                parse(mangled)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\nb", "tab\t"])
def test_invalid_key_names(name):
    with pytest.raises(ValueError, match="invalid key name"):
        SigningKey.generate(name)


# ------------------------------------------------------------------------------------------------
# The checkpoint file


def _notes(count: int, start: int = 1) -> list[str]:
    return [KEY.sign(make_checkpoint(size=n)) for n in range(start, start + count)]


def test_append_and_read_back(tmp_path):
    file = CheckpointFile(tmp_path / "checkpoints.txt")
    assert file.read() == []  # no file yet: no checkpoints
    notes = _notes(3)
    for note in notes:
        file.append(note)
    assert file.read() == notes
    assert list(file.iter_notes()) == notes
    assert (tmp_path / "checkpoints.txt").read_text() == "".join(n + "\n" for n in notes)
    assert [KEY.verifier().open(n).size for n in CheckpointFile(file.path).read()] == [1, 2, 3]


def test_append_fsyncs_the_file_and_a_new_directory_entry(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    file = CheckpointFile(tmp_path / "checkpoints.txt")
    file.append(_notes(1)[0])
    assert synced == ["file", "dir"]
    file.append(_notes(1, start=2)[0])
    assert synced == ["file", "dir", "file"]


def test_append_refuses_what_it_could_not_read_back(tmp_path):
    file = CheckpointFile(tmp_path / "checkpoints.txt")
    with pytest.raises(ValueError, match="not a signed note"):
        file.append("just text\n")
    with pytest.raises(ValueError, match="blank lines in its text"):
        file.append(KEY.sign_text("a\n\nb\n"))
    assert not file.path.exists()


def test_every_torn_write_is_reported_not_dropped(tmp_path):
    complete = _notes(2)
    entry = _notes(1, start=3)[0] + "\n"
    for cut in range(1, len(entry.encode())):
        path = tmp_path / f"torn-{cut}.txt"
        path.write_bytes("".join(n + "\n" for n in complete).encode() + entry.encode()[:cut])
        file = CheckpointFile(path)
        with pytest.raises(TornEntryError) as e:
            file.read()
        assert e.value.notes == complete
        assert e.value.line == 13  # two entries of six lines each come first
        assert e.value.offset == len("".join(n + "\n" for n in complete).encode())
        assert f"{path}:13: the last entry" in str(e.value)


def test_append_after_a_torn_entry_is_refused_until_discarded(tmp_path):
    file = CheckpointFile(tmp_path / "checkpoints.txt")
    first, second, third = _notes(3)
    file.append(first)
    with file.path.open("a") as f:
        f.write(second[:30])
    with pytest.raises(TornEntryError, match="incomplete"):
        file.append(third)
    assert file.discard_torn_tail() == second[:30]
    assert file.discard_torn_tail() is None
    file.append(third)
    assert file.read() == [first, third]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda text: text.replace("\n\n\u2014", "\n\u2014", 1), r":6: expected a signature line"),
        (lambda text: "\n" + text, r":1: blank line where a note should start"),
        (lambda text: text.replace("\n\n", "\n\n\n", 1), r":5: expected a signature line"),
    ],
)
def test_damage_inside_the_file_is_not_mistaken_for_a_torn_tail(tmp_path, damage, reason):
    path = tmp_path / "checkpoints.txt"
    file = CheckpointFile(path)
    for note in _notes(3):
        file.append(note)
    path.write_text(damage(path.read_text()))
    with pytest.raises(VerificationError, match=reason) as e:
        file.read()
    assert not isinstance(e.value, TornEntryError)


def test_unreadable_location(tmp_path):
    file = CheckpointFile(tmp_path / "missing-dir" / "checkpoints.txt")
    with pytest.raises(AuditError, match="cannot open checkpoint file"):
        file.append(_notes(1)[0])


def _append_many(path: str, worker: int, count: int) -> None:
    signing = SigningKey.parse(GO_SKEY)
    file = CheckpointFile(path)
    for i in range(count):
        file.append(signing.sign(Checkpoint(f"w{worker}", i, leaf_hash(b"%d" % i))))


def test_concurrent_appenders_never_interleave(tmp_path):
    path = str(tmp_path / "checkpoints.txt")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    verifier = VerifierKey.parse(GO_VKEY)
    opened = [verifier.open(note) for note in CheckpointFile(path).read()]
    assert len(opened) == 45
    for w in range(3):
        assert [cp.size for cp in opened if cp.origin == f"w{w}"] == list(range(15))
