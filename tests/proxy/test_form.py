"""Multipart form bodies: the model field found and replaced, checked against real encoders
(httpx's) and a real parser (the standard library's email package)."""

from __future__ import annotations

import email
import email.policy

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopin.proxy.form import FormError, NoModelField, form_model, is_multipart


def _encoded(data: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A body and its Content-Type as an SDK's HTTP client writes them."""
    request = httpx.Request(
        "POST",
        "http://x/v1/audio/transcriptions",
        data=data,
        files={name: (name + ".bin", content) for name, content in files.items()},
    )
    return request.headers["content-type"].encode(), request.read()


def _parsed(kind: bytes, body: bytes) -> dict[str, bytes]:
    message = email.message_from_bytes(
        b"Content-Type: " + kind + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def test_the_model_is_found_and_replaced_and_nothing_else_changes():
    audio = bytes(range(256)) * 40
    kind, body = _encoded({"model": "whisper-1", "language": "de"}, {"file": audio})
    assert is_multipart(kind) and not is_multipart(b"application/json")
    found = form_model(kind, body)
    assert found.model == "whisper-1"
    out = found.replaced(body, "whisper-eu-large")
    assert _parsed(kind, out) == {"model": b"whisper-eu-large", "language": b"de", "file": audio}


def test_a_quoted_boundary_a_preamble_and_a_file_before_the_model():
    body = (
        b'ignored preamble\r\n--b 1\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n-- not the boundary\r\n'
        b'--b 1\r\ncontent-disposition: form-data; name="model"\r\n\r\n gpt-4o-transcribe \r\n'
        b"--b 1--\r\n"
    )
    found = form_model(b'multipart/form-data; boundary="b 1"', body)
    assert found.model == "gpt-4o-transcribe"
    assert found.replaced(body, "m").endswith(b'name="model"\r\n\r\nm\r\n--b 1--\r\n')


_X = b"multipart/form-data; boundary=x"
_MODEL_PART = b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n'


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        (b"multipart/form-data", b"--x\r\n", "needs a boundary"),
        (_X, b"no boundary here", "does not hold the boundary"),
        (_X, b"--x\r\nContent-Disposition: form-data; name=", "headers do not end"),
        (_X, _MODEL_PART + b"gpt", "not closed"),
        (_X, b"--xjunk", "not followed by a line break"),
        (_X, _MODEL_PART + b"\xff\xfe\r\n--x--", "not UTF-8"),
        (_X, _MODEL_PART + b"  \r\n--x--", "must be a model name"),
    ],
)
def test_a_malformed_form_gets_a_precise_error(kind, body, message):
    with pytest.raises(FormError, match=message):
        form_model(kind, body)


def test_a_form_without_a_model_field_says_so():
    kind, body = _encoded({"language": "de"}, {"file": b"RIFF"})
    with pytest.raises(NoModelField, match="no 'model' field"):
        form_model(kind, body)


_FIELD = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=20)
_NAMES = st.sampled_from(["language", "prompt", "temperature", "response_format"])


@given(
    model=_FIELD.filter(lambda m: m.strip() == m),
    other=st.dictionaries(_NAMES, _FIELD, max_size=3),
    files=st.dictionaries(  # one file at least, or it is not a multipart form
        st.sampled_from(["file", "image", "mask"]), st.binary(max_size=300), min_size=1
    ),
    upstream=_FIELD.filter(lambda m: m.strip() == m),
)  # fmt: skip
def test_whatever_the_form_holds_only_the_model_changes(model, other, files, upstream):
    kind, body = _encoded({**other, "model": model}, files)
    found = form_model(kind, body)
    assert found.model == model
    before = _parsed(kind, body)
    after = _parsed(kind, found.replaced(body, upstream))
    assert after == {**before, "model": upstream.encode()}


def test_a_second_model_field_is_refused_wherever_it_is():
    """Parsers differ on which of two fields counts, so geopin takes neither."""
    kind, body = _encoded({"model": "whisper-1", "language": "de"}, {"file": b"RIFF" * 100})
    twice = body.replace(b'name="language"\r\n\r\nde', b'name="model"\r\n\r\nwhisper-large')
    assert twice != body
    with pytest.raises(FormError, match="more than one 'model' field"):
        form_model(kind, twice)
    assert form_model(kind, body).model == "whisper-1"
