"""The request target geopin forwards: the path as sent, checked and in normal form."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from geopin.proxy.target import (
    BadTarget,
    request_path,
    request_query,
    request_target,
    shown_path,
)


def _path(raw: bytes, decoded: str | None = None) -> str | None:
    """The path as forwarded; None when it is refused."""
    try:
        return request_path({"raw_path": raw, "path": decoded if decoded is not None else ""})
    except BadTarget:
        return None


def _query(raw: bytes) -> str | None:
    try:
        return request_query({"query_string": raw})
    except BadTarget:
        return None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/m%65ssages", "/v1/messages"),  # unreserved characters are decoded
        (b"/v1/files/a%7eb", "/v1/files/a~b"),
        (b"/openai/deployments/gpt%2d4o/embeddings", "/openai/deployments/gpt-4o/embeddings"),
        (b"/v1/x%20y", "/v1/x%20y"),  # reserved or other characters stay escaped, upper case
        (b"/v1/x%3ay", "/v1/x%3Ay"),
        (b"/v1/caf%c3%a9", "/v1/caf%C3%A9"),
        (b"/v1/a;b=c/@d", "/v1/a;b=c/@d"),
        (b"/v1/.well/..known", "/v1/.well/..known"),  # dots inside a segment are not dot segments
    ],
)  # fmt: skip
def test_a_path_is_forwarded_in_normal_form(raw, expected):
    assert _path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/chat%0d%0aX-Evil:%201/completions",  # a line break: a header or a second request
        b"/v1/chat%0Acompletions",
        b"/v1/chat%00",
        b"/v1/chat%7f",
        b"/v1/../admin",  # dot segments: another path than the one decided on
        b"/v1/./chat/completions",
        b"/v1/chat/..",
        b"/v1/%2e%2e/admin",
        b"/v1/%2E/chat",
        b"/v1//models",  # empty segments: merged into one "/" by many servers
        b"/v1/chat//completions",
        b"//v1/chat/completions",
        b"/v1/chat%2f..%2fadmin",  # an escaped separator
        b"/v1/chat%5c..%5cadmin",
        b"/v1/chat%2",  # malformed escapes
        b"/v1/chat%zz",
        b"/v1/chat%",
        b"/v1/chat completions",  # bytes outside RFC 3986's path characters
        b"/v1/chat\r\nx",
        b"/v1/chat\tx",
        b"/v1/caf\xc3\xa9",
        b'/v1/"quoted"',
        b"/v1/<script>",
        b"/v1/a\\b",
        b"v1/chat/completions",  # not absolute
    ],
)
def test_a_path_that_could_change_what_the_upstream_sees_is_refused(raw):
    assert _path(raw) is None


def test_without_raw_path_the_decoded_path_is_escaped_again_and_checked():
    assert request_path({"path": "/v1/chat/completions"}) == "/v1/chat/completions"
    assert request_path({"path": "/v1/x y"}) == "/v1/x%20y"
    with pytest.raises(BadTarget):
        request_path({"path": "/v1/chat\r\nX-Evil: 1"})
    with pytest.raises(BadTarget):
        request_path({"path": "/v1/../admin"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", ""),
        (b"api-version=2024-10-21", "api-version=2024-10-21"),
        (b"a=%2F&b=c%3Fd", "a=%2F&b=c%3Fd"),  # an escaped slash is only data in a query
        (b"x=%61", "x=a"),
        (b"x=/a?b", "x=/a?b"),
        (b"x=%0d%0a", None),
        (b"x=a b", None),
        (b"x=%g1", None),
        (b"x=#frag", None),
    ],
)
def test_a_query_is_checked_and_normalised(raw, expected):
    assert _query(raw) == expected


@pytest.mark.parametrize(
    ("raw_path", "query", "message"),
    [
        (b"/v1/chat completions", b"", "path has a space at offset 8, which RFC 3986"),
        (b"/v1/caf\xc3\xa9", b"", "path has the byte 0xC3 at offset 7,"),
        (b'/v1/"x"', b"", "path has '\"' at offset 4,"),
        (b"/v1/chat%zz", b"", "path has a malformed escape '%zz' at offset 8"),
        (b"/v1/m%65s%2", b"", "path has a malformed escape '%2' at offset 9"),
        (b"/v1/a%0d%0ab", b"", "path has an escaped control character '%0D' at offset 5"),
        (b"/v1/%65%2f..", b"", "path has an escaped separator '%2F' at offset 7"),
        (b"v1/models", b"", "path does not begin with '/'"),
        (b"/v1//chat/completions", b"", "path has an empty segment ('//') at offset 3 ("),
        (b"/v1/%2e%2e/admin", b"", "path has a '..' segment"),
        (b"/v1/m", b"a=%0a", "query string has an escaped control character '%0A' at offset 2"),
        (b"/v1/models", b"a=#", "query string has '#' at offset 2,"),
    ],
)
def test_a_refused_target_says_what_is_wrong_and_where(raw_path, query, message):
    with pytest.raises(BadTarget) as refused:
        request_target({"raw_path": raw_path, "path": "", "query_string": query})
    assert str(refused.value).startswith("the request's " + message), str(refused.value)


def test_a_target_is_its_path_and_query_in_normal_form():
    scope = {"raw_path": b"/v1/m%65ssages", "path": "", "query_string": b"x=%61"}
    assert request_target(scope) == ("/v1/messages", "x=a")
    assert request_target({"raw_path": b"/v1/models", "path": ""}) == ("/v1/models", "")


def test_a_refused_path_is_shown_escaped():
    assert shown_path({"raw_path": b"/v1/\xff<x>", "path": ""}) == "/v1/\\xff<x>"
    assert shown_path({"path": "/v1/a\r\nb"}) == "/v1/a\\r\\nb"


_ANY_PATH = st.binary(max_size=40).map(lambda tail: b"/v1/" + tail)
_TRICKY = st.lists(
    st.sampled_from(
        [b"/", b".", b"..", b"%", b"%2e", b"%2E", b"%2f", b"%0d", b"%0a", b"%65", b"%20", b"a",
         b"-", b"~", b"\r", b"\n", b" ", b"%5C", b"\\", b"%7F", b"%00", b"%c3%a9"]
    ),
    max_size=12,
).map(lambda parts: b"/v1/" + b"".join(parts))  # fmt: skip


@given(st.one_of(_ANY_PATH, _TRICKY))
def test_whatever_a_client_sends_what_is_forwarded_is_one_clean_path(raw):
    path = _path(raw)
    if path is None:
        return
    assert path.startswith("/")
    assert path.isascii() and path.isprintable() and " " not in path and "\\" not in path
    decoded = unquote(path)
    assert not any(ch < " " or ch == "\x7f" for ch in decoded)  # no control byte, escaped or not
    assert decoded.count("/") == path.count("/")  # no escaped separator
    assert not {".", ".."} & set(path.split("/"))
    assert "//" not in path  # no empty segment
    assert unquote(path) == unquote(raw.decode("ascii"))  # the same path, only normalised
    assert _path(path.encode()) == path  # normal form is a fixed point


@given(st.one_of(_ANY_PATH, _TRICKY))
@example(b"/v1//")
@example(b"/v1/a%2")
def test_a_refusal_points_at_what_the_client_sent(raw):
    """Where a refusal names an offset, the problem it names begins there in the path as sent."""
    try:
        request_path({"raw_path": raw, "path": ""})
    except BadTarget as refused:
        message = str(refused)
        assert message.startswith("the request's path ")
        if " at offset " in message:
            at = int(message.split(" at offset ")[1].split()[0].rstrip(","))
            if "escape" in message:
                assert raw[at : at + 1] == b"%"
            elif "empty segment" in message:
                assert raw[at : at + 2] == b"//"
            else:  # a byte RFC 3986 does not allow
                assert not raw[at : at + 1].isalnum() and raw[at] not in b"/%"
