"""The mock upstream's in-memory objects: uploaded files, stored responses, and the form parser.

Ids carry a random token drawn once per store, so two mock upstreams never issue the same id
and a test can tell which instance holds an object.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPE = re.compile(r"\\(.)")


class MultipartError(ValueError):
    """A ``multipart/form-data`` body that cannot be read."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    content: bytes


@dataclass
class ObjectStore:
    """Files and stored responses of one mock instance; ``clear`` empties both."""

    region: str
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str, separator: str = "-") -> str:
        return separator.join((prefix, self.region, f"{self.token}{next(self._serial):04d}"))

    def add_file(self, file: dict[str, Any], content: bytes) -> None:
        self.files[file["id"]] = file
        self.contents[file["id"]] = content

    def delete_file(self, ident: str) -> bool:
        self.contents.pop(ident, None)
        return self.files.pop(ident, None) is not None

    def clear(self) -> None:
        self.files.clear()
        self.contents.clear()
        self.responses.clear()


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``'form-data; name="a"'`` as ``("form-data", {"name": "a"})``; names are lowercased."""
    main, _, rest = value.partition(";")
    params = {}
    for name, raw in _PARAM.findall(";" + rest):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = _ESCAPE.sub(r"\1", raw[1:-1])
        params[name.lower()] = raw
    return main.strip().lower(), params


def parse_form(content_type: str, body: bytes) -> list[Part]:
    """The parts of a ``multipart/form-data`` body, in order."""
    kind, params = header_params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not boundary:
        raise MultipartError("the body must be multipart/form-data with a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        position = len(delimiter)
    else:
        first = body.find(b"\r\n" + delimiter)
        if first < 0:
            raise MultipartError("the multipart body has no boundary line")
        position = first + 2 + len(delimiter)
    parts = []
    while not body.startswith(b"--", position):
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise MultipartError("the multipart body has a malformed boundary line")
        end = body.find(b"\r\n" + delimiter, line_end + 2)
        if end < 0:
            raise MultipartError("the multipart body ends inside a part")
        parts.append(_part(body[line_end + 2 : end]))
        position = end + 2 + len(delimiter)
    return parts


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):
        head, content = b"", raw[2:]
    else:
        head, separator, content = raw.partition(b"\r\n\r\n")
        if not separator:
            raise MultipartError("a multipart part has no end to its headers")
    headers = {}
    for line in head.decode("utf-8", "replace").split("\r\n") if head else []:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"a multipart part has a malformed header line: {line!r}")
        headers[name.strip().lower()] = value.strip()
    disposition, params = header_params(headers.get("content-disposition", ""))
    if disposition != "form-data" or not params.get("name"):
        raise MultipartError("each multipart part needs Content-Disposition: form-data; name=")
    return Part(params["name"], params.get("filename"), headers.get("content-type"), content)
