"""``multipart/form-data`` request bodies (audio transcriptions and translations, image
edits, file uploads): the ``model`` field found, and replaced, without touching the rest.

Only the part headers are read; a file part's bytes are passed over, never decoded or copied.
RFC 7578 is the format: a ``boundary`` parameter on the content type, parts opened by
``--boundary`` and a line break, each with a ``Content-Disposition: form-data; name=...``
header, and a closing ``--boundary--``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MULTIPART = b"multipart/form-data"
_BOUNDARY = re.compile(rb'(?i);\s*boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))')
_NAME = re.compile(rb'(?i)\bname="([^"]*)"')
_MAX_MODEL_BYTES = 256


class FormError(ValueError):
    """The body is not the multipart form its content type says, or has no model field."""


class NoModelField(FormError):
    """A well-formed form without a ``model`` field."""


@dataclass(frozen=True, slots=True)
class FormModel:
    """The ``model`` field of a form: its text, and where its bytes lie in the body."""

    model: str
    start: int
    end: int

    def replaced(self, body: bytes, model: str) -> bytes:
        """``body`` with the model field's value set to ``model``."""
        return body[: self.start] + model.encode() + body[self.end :]


def is_multipart(content_type: bytes) -> bool:
    return content_type[: len(MULTIPART)].lower() == MULTIPART


def form_model(content_type: bytes, body: bytes) -> FormModel:
    """The model field of ``body``; FormError says precisely what is wrong when there is none,
    or more than one (every part is read to know)."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise FormError("a multipart/form-data body needs a boundary in its Content-Type")
    delimiter = b"--" + (found.group(1) or found.group(2))
    position = _first_part(body, delimiter)
    model: FormModel | None = None
    while True:
        if body.startswith(b"--", position):
            if model is None:
                raise NoModelField("the multipart form has no 'model' field")
            return model
        if not body.startswith(b"\r\n", position):
            raise FormError("a multipart delimiter is not followed by a line break")
        head_end = body.find(b"\r\n\r\n", position + 2)
        if head_end == -1:
            raise FormError("a multipart part's headers do not end")
        content = head_end + 4
        end = body.find(b"\r\n" + delimiter, content)
        if end == -1:
            raise FormError("the multipart form is not closed by its boundary")
        name = _field_name(body[position + 2 : head_end])
        if name == b"model":
            if model is not None:  # parsers differ on which one counts: refused, as in JSON
                raise FormError("the multipart form has more than one 'model' field")
            model = FormModel(_model_text(body[content:end]), content, end)
        position = end + 2 + len(delimiter)


def _first_part(body: bytes, delimiter: bytes) -> int:
    if body.startswith(delimiter):
        return len(delimiter)
    start = body.find(b"\r\n" + delimiter)  # a preamble before the first part
    if start == -1:
        raise FormError("the body does not hold the boundary its Content-Type names")
    return start + 2 + len(delimiter)


def _field_name(head: bytes) -> bytes | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            found = _NAME.search(value)
            return found.group(1) if found else None
    return None


def _model_text(value: bytes) -> str:
    try:
        model = value.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise FormError("the form's 'model' field is not UTF-8 text") from exc
    if not model or len(value) > _MAX_MODEL_BYTES:
        raise FormError("the form's 'model' field must be a model name")
    return model
