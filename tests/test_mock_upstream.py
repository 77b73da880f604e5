"""The mock upstream over real sockets, and the load generator's response parser."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from geopin.errors import GeopinError
from geopin.mock.command import mock_upstream
from geopin.mock_upstream import RunningServer, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]


def _load_loadgen():
    spec = importlib.util.spec_from_file_location("bench_loadgen", ROOT / "bench" / "loadgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


loadgen = _load_loadgen()


def chat_body(**overrides):
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "three little words"}],
    }
    body.update(overrides)
    return body


@pytest.fixture
def eu() -> Iterator[RunningServer]:
    with serve_in_thread("eu-west", stream_chunks=4) as server:
        yield server


@pytest.fixture
def client(eu: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=eu.url, timeout=10) as http:
        yield http


def _events(raw: bytes) -> list[bytes]:
    return [event for event in raw.split(b"\n\n") if event]


def _data(event: bytes) -> bytes:
    return next(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))


# ---- OpenAI shapes ----------------------------------------------------------------------


def test_chat_completion_names_region_echoes_model_and_counts_tokens(client):
    response = client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"))

    assert response.status_code == 200
    assert response.headers["x-mock-region"] == "eu-west"
    answer = response.json()
    assert answer["region"] == "eu-west"
    assert answer["model"] == "gpt-4o"
    assert answer["system_fingerprint"] == "fp_mock_eu-west"
    assert answer["object"] == "chat.completion"
    content = answer["choices"][0]["message"]["content"]
    assert content.startswith("[eu-west] ")
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_stream_arrives_in_separate_chunks_and_ends_with_done():
    with serve_in_thread("us-east", stream_chunks=4, chunk_delay_ms=20) as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            whole = http.post("/v1/chat/completions", json=chat_body()).json()
            body = chat_body(stream=True, stream_options={"include_usage": True})
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["x-mock-region"] == "us-east"
                chunks = list(response.iter_raw())

    assert len(chunks) > 1
    events = _events(b"".join(chunks))
    assert events[-1] == b"data: [DONE]"
    payloads = [json.loads(_data(event)) for event in events[:-1]]
    assert all(p["region"] == "us-east" and p["model"] == "gpt-4o-mini" for p in payloads)
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"] == whole["usage"]
    assert all(p["usage"] is None for p in payloads[:-1])


def test_stream_without_include_usage_carries_no_usage(client):
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response:
        events = _events(response.read())

    assert events[-1] == b"data: [DONE]"
    assert all("usage" not in json.loads(_data(event)) for event in events[:-1])


def test_legacy_completion_streams_and_answers_whole(client):
    whole = client.post("/v1/completions", json={"model": "davinci", "prompt": "a b"}).json()
    body = {"model": "davinci", "prompt": "a b", "stream": True}
    streamed = _events(client.post("/v1/completions", json=body).content)

    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"].startswith("[eu-west]")
    assert whole["usage"]["prompt_tokens"] == 2
    assert streamed[-1] == b"data: [DONE]"
    pieces = [json.loads(_data(e))["choices"][0]["text"] for e in streamed[:-1]]
    assert "".join(pieces) == whole["choices"][0]["text"]


def test_embeddings_are_per_input_deterministic_and_differ_by_region(client):
    body = {"model": "text-embedding-3-small", "input": ["one", "two words"]}
    first = client.post("/v1/embeddings", json=body).json()
    again = client.post("/v1/embeddings", json=body).json()
    with serve_in_thread("us-east") as us:
        other = httpx.post(f"{us.url}/v1/embeddings", json=body).json()

    assert [item["index"] for item in first["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 8 for item in first["data"])
    assert first["data"] == again["data"]
    assert first["data"][0]["embedding"] != other["data"][0]["embedding"]
    assert (first["region"], other["region"]) == ("eu-west", "us-east")
    assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    single = client.post("/v1/embeddings", json={"model": "m", "input": "x", "dimensions": 3})
    assert len(single.json()["data"][0]["embedding"]) == 3


def test_models_lists_ids(client):
    response = client.get("/v1/models")

    assert response.headers["x-mock-region"] == "eu-west"
    assert "gpt-4o-mini" in [model["id"] for model in response.json()["data"]]


# ---- Anthropic and Azure shapes ---------------------------------------------------------


def test_anthropic_message_whole_and_streamed(client):
    body = {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "a"}]}
    whole = client.post("/v1/messages", json=body).json()
    streamed = _events(client.post("/v1/messages", json=dict(body, stream=True)).content)

    assert whole["type"] == "message" and whole["model"] == "claude-x"
    assert whole["region"] == "eu-west"
    assert whole["content"][0]["text"].startswith("[eu-west]")
    assert whole["usage"] == {"input_tokens": 1, "output_tokens": 4}
    names = [event.split(b"\n")[0] for event in streamed]
    assert names[0] == b"event: message_start" and names[-1] == b"event: message_stop"
    assert b"data: [DONE]" not in streamed
    deltas = [json.loads(_data(e)) for e in streamed if e.startswith(b"event: content_block_delta")]
    assert "".join(d["delta"]["text"] for d in deltas) == whole["content"][0]["text"]
    final = json.loads(_data(streamed[-2]))
    assert final["usage"] == {"output_tokens": 4}


def test_azure_deployment_path_uses_deployment_as_model(client):
    path = "/openai/deployments/gpt4o-eu/chat/completions?api-version=2024-10-21"
    chat = client.post(path, json={"messages": [{"role": "user", "content": "x"}]})
    embeddings_path = "/openai/deployments/emb-eu/embeddings?api-version=2024-10-21"
    embedded = client.post(embeddings_path, json={"input": "x"})

    assert chat.status_code == 200 and chat.json()["model"] == "gpt4o-eu"
    assert chat.headers["x-mock-region"] == "eu-west"
    assert embedded.json()["model"] == "emb-eu"
    seen = client.get("/_mock/last-request").json()["request"]
    assert seen["query"] == {"api-version": "2024-10-21"}


def test_azure_path_without_api_version_is_refused(client):
    response = client.post("/openai/deployments/d/chat/completions", json={"messages": []})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_api_version"


# ---- control: capture, failure, latency --------------------------------------------------


def test_last_request_shows_what_reached_the_upstream(client):
    assert client.get("/_mock/last-request").json()["request"] is None
    client.post(
        "/v1/chat/completions?trace=1",
        json=chat_body(),
        headers={"Authorization": "Bearer router-key", "X-Extra": "1"},
    )
    client.get("/healthz")  # probes must not hide the last model request

    seen = client.get("/_mock/last-request").json()
    request = seen["request"]
    assert seen["requests"] == 1
    assert request["method"] == "POST" and request["path"] == "/v1/chat/completions"
    assert request["query"] == {"trace": "1"}
    assert request["headers"]["authorization"] == "Bearer router-key"
    assert request["headers"]["x-extra"] == "1"
    assert request["json"] == chat_body()


def test_fail_and_recover_switch_answers_and_health(client):
    assert client.post("/_mock/fail").json() == {"region": "eu-west", "failing": True}
    failed = client.post("/v1/chat/completions", json=chat_body())
    unhealthy = client.get("/healthz")
    anthropic = client.post("/v1/messages", json={"model": "c", "max_tokens": 1, "messages": []})
    client.post("/_mock/recover")
    recovered = client.post("/v1/chat/completions", json=chat_body())

    assert failed.status_code == 503
    assert failed.headers["x-mock-region"] == "eu-west"
    assert failed.json()["error"]["type"] == "server_error"
    assert unhealthy.status_code == 503
    assert anthropic.status_code == 503 and anthropic.json()["type"] == "error"
    assert recovered.status_code == 200
    assert client.get("/healthz").json() == {"status": "ok", "region": "eu-west"}


def test_fail_rate_fails_about_that_share_of_requests():
    with serve_in_thread("eu", fail_rate=0.5, seed=7) as server:
        with httpx.Client(base_url=server.url) as http:
            codes = [
                http.post("/v1/embeddings", json={"model": "m", "input": "x"}).status_code
                for _ in range(200)
            ]

    assert set(codes) == {200, 500}
    assert 60 < codes.count(500) < 140


def test_latency_delays_answers():
    with serve_in_thread("eu", latency_ms=120) as server:
        started = time.perf_counter()
        response = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
        elapsed = time.perf_counter() - started
        health_started = time.perf_counter()
        httpx.get(f"{server.url}/healthz")
        health_elapsed = time.perf_counter() - health_started

    assert response.status_code == 200
    assert elapsed >= 0.12
    assert health_elapsed < 0.12


@pytest.mark.parametrize(
    ("path", "content", "code"),
    [
        ("/v1/chat/completions", b'{"model": ', "invalid_json"),
        ("/v1/chat/completions", b"[1, 2]", "invalid_json"),
        ("/v1/chat/completions", b'{"messages": []}', "missing_model"),
        ("/v1/chat/completions", b'{"model": "m"}', "invalid_messages"),
        ("/v1/embeddings", b'{"model": "m"}', "missing_input"),
        (
            "/v1/embeddings",
            b'{"model": "m", "input": "x", "dimensions": "8"}',
            "invalid_dimensions",
        ),
    ],
)
def test_bad_bodies_get_400_in_openai_error_shape(client, path, content, code):
    response = client.post(path, content=content)

    assert response.status_code == 400
    assert response.headers["x-mock-region"] == "eu-west"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


def test_bad_anthropic_body_gets_anthropic_error_shape(client):
    response = client.post("/v1/messages", content=b"{oops")

    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_404(client):
    assert client.get("/v1/chat/completions").status_code == 404
    assert client.post("/v2/anything", json={}).json()["error"]["code"] == "no_route"


# ---- the object API: files and stored responses -------------------------------------------

FILE_BYTES = b"line one\r\nline two\r\n--not-a-boundary\r\n" + bytes(range(256)) + b"\r\n"


def upload(http: httpx.Client, content: bytes = FILE_BYTES, purpose: str = "batch", name="a.jsonl"):
    return http.post("/v1/files", data={"purpose": purpose}, files={"file": (name, content)})


def no_such_file(ident: str) -> dict:
    return {
        "error": {
            "message": f"No such File object: {ident}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    }


def test_an_uploaded_file_reads_back_as_its_object_and_identical_bytes(client):
    response = upload(client)

    assert response.status_code == 200 and response.headers["x-mock-region"] == "eu-west"
    stored = response.json()
    assert stored["id"].startswith("file-eu-west-")
    assert stored["object"] == "file" and stored["region"] == "eu-west"
    assert (stored["bytes"], stored["filename"], stored["purpose"]) == (
        len(FILE_BYTES),
        "a.jsonl",
        "batch",
    )
    assert isinstance(stored["created_at"], int)
    seen = client.get("/_mock/last-request").json()["request"]
    assert (seen["method"], seen["path"]) == ("POST", "/v1/files")
    assert seen["headers"]["content-type"].startswith("multipart/form-data; boundary=")

    again = client.get(f"/v1/files/{stored['id']}?trace=1")
    content = client.get(f"/v1/files/{stored['id']}/content")

    assert again.status_code == 200 and again.json() == stored
    assert content.status_code == 200 and content.content == FILE_BYTES
    assert content.headers["content-type"] == "application/octet-stream"
    assert content.headers["x-mock-region"] == "eu-west"
    seen = client.get("/_mock/last-request").json()["request"]
    assert (seen["method"], seen["path"]) == ("GET", f"/v1/files/{stored['id']}/content")
    assert client.get("/_mock/last-request").json()["requests"] == 3


def test_a_hand_written_form_with_quoted_boundary_and_preamble_is_read(client):
    body = (
        b"a preamble to ignore\r\n"
        b"--b;x\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        b"fine-tune\r\n"
        b"--b;x\r\n"
        b'Content-Disposition: form-data; name="file"; filename="semi;colon \\"q\\".txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
        b"\r\n--b;\r\n\r\n"
        b"--b;x--\r\nan epilogue\r\n"
    )
    headers = {"content-type": 'multipart/form-data; boundary="b;x"'}
    stored = client.post("/v1/files", content=body, headers=headers).json()

    assert stored["filename"] == 'semi;colon "q".txt' and stored["purpose"] == "fine-tune"
    assert client.get(f"/v1/files/{stored['id']}/content").content == b"\r\n--b;\r\n"
    assert stored["bytes"] == 8


def test_files_list_filters_by_purpose_and_a_deleted_file_is_gone(client):
    batch = upload(client, b"one", "batch").json()
    tuning = upload(client, b"two", "fine-tune").json()

    listed = client.get("/v1/files").json()
    filtered = client.get("/v1/files", params={"purpose": "fine-tune"}).json()
    deleted = client.delete(f"/v1/files/{batch['id']}")

    assert listed["object"] == "list" and listed["region"] == "eu-west"
    assert listed["data"] == [batch, tuning]
    assert filtered["data"] == [tuning]
    assert deleted.status_code == 200
    assert deleted.json() == {"id": batch["id"], "object": "file", "deleted": True,
                              "region": "eu-west"}  # fmt: skip
    for method, path in (
        ("GET", f"/v1/files/{batch['id']}"),
        ("GET", f"/v1/files/{batch['id']}/content"),
        ("DELETE", f"/v1/files/{batch['id']}"),
    ):
        gone = client.request(method, path)
        assert gone.status_code == 404 and gone.json() == no_such_file(batch["id"])
        assert gone.headers["x-mock-region"] == "eu-west"
    assert client.get("/v1/files").json()["data"] == [tuning]


def test_a_second_mock_does_not_know_the_first_ones_ids(client):
    first = upload(client).json()
    answer = client.post("/v1/responses", json={"model": "gpt-4o", "input": "x"}).json()
    with serve_in_thread("eu-west") as twin, httpx.Client(base_url=twin.url) as other:
        unknown = other.get(f"/v1/files/{first['id']}")
        unknown_answer = other.get(f"/v1/responses/{answer['id']}")
        own = upload(other).json()
        own_answer = other.post("/v1/responses", json={"model": "gpt-4o", "input": "x"}).json()

    assert unknown.status_code == 404 and unknown.json() == no_such_file(first["id"])
    assert unknown_answer.status_code == 404
    assert own["id"] != first["id"] and own_answer["id"] != answer["id"]
    assert client.get(f"/v1/files/{own['id']}").status_code == 404


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/json", b'{"purpose": "batch"}', "invalid_multipart"),
        ("multipart/form-data", b"--x\r\n", "invalid_multipart"),
        ("multipart/form-data; boundary=x", b"no boundary line here", "invalid_multipart"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
            "invalid_multipart",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"\r\nabc\r\n--x--\r\n',
            "invalid_multipart",
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Type: text/plain\r\n\r\nabc\r\n--x--\r\n",
            "invalid_multipart",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--x--\r\n',
            "missing_file",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc\r\n--x--\r\n',
            "missing_file",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            b"abc\r\n--x--\r\n",
            "missing_purpose",
        ),
    ],
)
def test_a_malformed_upload_gets_400_and_the_mock_keeps_serving(client, content_type, body, code):
    response = client.post("/v1/files", content=body, headers={"content-type": content_type})

    assert response.status_code == 400 and response.headers["x-mock-region"] == "eu-west"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    assert client.get("/v1/files").json()["data"] == []
    assert upload(client).status_code == 200


def test_a_stored_response_reads_back_until_deleted(client):
    body = {"model": "gpt-4o", "input": [{"role": "user", "content": "two words"}]}
    created = client.post("/v1/responses", json=body)

    assert created.status_code == 200 and created.headers["x-mock-region"] == "eu-west"
    answer = created.json()
    assert answer["id"].startswith("resp_eu-west_")
    assert (answer["object"], answer["model"], answer["region"]) == (
        "response",
        "gpt-4o",
        "eu-west",
    )
    (message,) = answer["output"]
    assert (message["type"], message["role"]) == ("message", "assistant")
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"].startswith("[eu-west] ")
    assert answer["usage"] == {"input_tokens": 2, "output_tokens": 4, "total_tokens": 6}

    stored = client.get(f"/v1/responses/{answer['id']}")
    deleted = client.delete(f"/v1/responses/{answer['id']}")
    gone = client.get(f"/v1/responses/{answer['id']}")
    deleted_again = client.delete(f"/v1/responses/{answer['id']}")

    assert stored.status_code == 200 and stored.json() == answer
    assert deleted.json() == {"id": answer["id"], "object": "response", "deleted": True,
                              "region": "eu-west"}  # fmt: skip
    assert gone.status_code == 404 and deleted_again.status_code == 404
    error = gone.json()["error"]
    assert error["type"] == "invalid_request_error" and answer["id"] in error["message"]
    seen = client.get("/_mock/last-request").json()["request"]
    assert (seen["method"], seen["path"]) == ("DELETE", f"/v1/responses/{answer['id']}")


def test_responses_need_a_model_are_whole_and_store_false_is_not_kept(client):
    unstored = client.post("/v1/responses", json={"model": "m", "input": "x", "store": False})
    no_model = client.post("/v1/responses", json={"input": "x"})
    streamed = client.post("/v1/responses", json={"model": "m", "input": "x", "stream": True})

    assert unstored.status_code == 200
    assert client.get(f"/v1/responses/{unstored.json()['id']}").status_code == 404
    assert no_model.status_code == 400 and no_model.json()["error"]["code"] == "missing_model"
    assert streamed.status_code == 400
    assert streamed.json()["error"]["code"] == "unsupported_stream"
    assert streamed.json()["error"]["param"] == "stream"


def test_reset_empties_the_object_store(client):
    stored = upload(client).json()
    answer = client.post("/v1/responses", json={"model": "m", "input": "x"}).json()

    assert client.post("/_mock/reset").status_code == 200

    assert client.get("/v1/files").json()["data"] == []
    assert client.get(f"/v1/files/{stored['id']}").status_code == 404
    assert client.get(f"/v1/files/{stored['id']}/content").status_code == 404
    assert client.get(f"/v1/responses/{answer['id']}").status_code == 404
    assert upload(client).json()["id"] != stored["id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/files"),
        ("DELETE", "/v1/files"),
        ("POST", "/v1/files/file-x"),
        ("DELETE", "/v1/files/file-x/content"),
        ("GET", "/v1/files/file-x/other"),
        ("GET", "/v1/files/"),
        ("GET", "/v1/responses"),
        ("PATCH", "/v1/responses/resp_x"),
        ("GET", "/v1/responses/resp_x/input_items"),
    ],
)
def test_unserved_methods_and_paths_of_the_object_api_are_no_route(client, method, path):
    response = client.request(method, path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_route"


# ---- running it ---------------------------------------------------------------------------


def test_serve_in_thread_refuses_a_busy_port_and_stops_cleanly(eu):
    with pytest.raises(GeopinError, match="cannot bind"):
        serve_in_thread("again", port=eu.port)
    eu.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{eu.url}/healthz")


def test_command_documents_and_validates_its_options():
    runner = CliRunner()
    shown = runner.invoke(mock_upstream, ["--help"])
    refused = runner.invoke(mock_upstream, ["--port", "1", "--region", "eu", "--fail-rate", "2"])

    assert shown.exit_code == 0
    for option in ("--port", "--region", "--latency-ms", "--fail-rate", "--stream-chunks"):
        assert option in shown.output
    assert refused.exit_code == 2 and "--fail-rate" in refused.output


@pytest.mark.slow
def test_python_dash_m_serves_until_terminated(unused_port):
    command = [sys.executable, "-m", "geopin.mock_upstream", "--port", str(unused_port)]
    process = subprocess.Popen([*command, "--region", "ap-south"], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{unused_port}/healthz")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "mock upstream did not start"
                time.sleep(0.05)
        assert response.json() == {"status": "ok", "region": "ap-south"}
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the load generator's response parser -------------------------------------------------

CONTENT_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5;ext=1\r\ndata:\r\n"
    b"10\r\n [DONE]xxxxxxxxx\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)


def test_parser_reads_a_content_length_response_and_its_first_byte_time():
    parser = loadgen.ResponseParser()

    assert parser.feed(CONTENT_LENGTH, 1.0) == []
    assert parser.feed(b'{"a":', 2.0) == []
    (response,) = parser.feed(b'"bcd"}', 3.0)

    assert (response.status, response.body_bytes) == (200, 11)
    assert (response.first_byte_at, response.done_at) == (2.0, 3.0)
    assert response.tail == b'{"a":"bcd"}' and response.keep_alive
    assert parser.idle


def test_parser_reads_chunked_with_extensions_and_trailers():
    (response,) = loadgen.ResponseParser().feed(CHUNKED, 5.0)

    assert response.body_bytes == 5 + 16
    assert response.tail == b"data: [DONE]xxxxxxxxx"


def test_parser_splits_pipelined_responses_and_honours_connection_close():
    closing = b"HTTP/1.1 503 No\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    responses = loadgen.ResponseParser().feed(CONTENT_LENGTH + b"x" * 11 + CHUNKED + closing, 1.0)

    assert [r.status for r in responses] == [200, 200, 503]
    assert [r.body_bytes for r in responses] == [11, 21, 0]
    assert [r.keep_alive for r in responses] == [True, True, False]


def test_parser_reads_a_close_delimited_body_and_rejects_a_truncated_one():
    parser = loadgen.ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\nabc", 1.0) == []
    assert parser.feed_eof(2.0).body_bytes == 3

    truncated = loadgen.ResponseParser()
    truncated.feed(CONTENT_LENGTH + b"short", 1.0)
    with pytest.raises(loadgen.ProtocolError):
        truncated.feed_eof(2.0)
    with pytest.raises(loadgen.ProtocolError):
        loadgen.ResponseParser().feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1
        )


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED) * 2 + 20), max_size=12))
def test_parser_result_does_not_depend_on_how_bytes_are_split(cuts):
    stream = CHUNKED + CONTENT_LENGTH + b"0123456789A"
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    parser = loadgen.ResponseParser()
    responses = []
    for index, (start, end) in enumerate(zip(points, points[1:], strict=False)):
        responses += parser.feed(stream[start:end], float(index))

    assert [(r.status, r.body_bytes, r.tail) for r in responses] == [
        (200, 21, b"data: [DONE]xxxxxxxxx"),
        (200, 11, b"0123456789A"),
    ]
    assert parser.idle


def test_loadgen_measures_the_mock_over_real_connections(eu):
    url = f"{eu.url}/v1/chat/completions"
    body = json.dumps(chat_body(stream=True)).encode()
    result = loadgen.run_sync(
        url,
        loadgen.build_request(url, body),
        concurrency=4,
        requests=200,
        duration=10,
        expect_tail=b"data: [DONE]\n\n",
    )

    assert result.ok == 200 and result.error_count == 0
    assert result.statuses == {200: 200}
    assert len(result.ttfbs) == 200
    assert all(
        0 < ttfb <= latency for ttfb, latency in zip(result.ttfbs, result.latencies, strict=True)
    )
    assert eu.app.state.requests == 200


def test_loadgen_counts_error_statuses(eu):
    eu.app.state.failing = True
    url = f"{eu.url}/v1/chat/completions"
    request = loadgen.build_request(url, json.dumps(chat_body()).encode())
    result = loadgen.run_sync(url, request, concurrency=2, requests=10, duration=10)

    assert result.ok == 0
    assert result.errors == {"http_503": 10}


def test_azure_openai_s_own_object_paths_are_the_same_objects(client):
    uploaded = client.post(
        "/openai/files?api-version=2024-10-21",
        data={"purpose": "batch"},
        files={"file": ("a.jsonl", FILE_BYTES)},
    )
    assert uploaded.status_code == 200, uploaded.text
    ident = uploaded.json()["id"]
    assert client.get(f"/v1/files/{ident}/content").content == FILE_BYTES
    assert client.get(f"/openai/files/{ident}?api-version=2024-10-21").json()["id"] == ident
