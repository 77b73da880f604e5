"""Hot reload: a broken policy is rejected while the running one keeps serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from geo.conftest import city_record, write_mmdb  # the GeoIP tests' database writer
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.keys import KeyStore

from .conftest import endpoint_yaml, start_router, write_policy

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path, mocks):
    se, de = mocks("eu-se"), mocks("eu-de")
    endpoints = [
        endpoint_yaml("eu-se", se.url + "/v1", "SE"),
        endpoint_yaml("eu-de", de.url + "/v1", "DE"),
    ]
    return tmp_path, endpoints


def _version(router) -> str:
    return router.admin("GET", "/_geopin/policy").json()["version"]


def test_a_broken_policy_is_rejected_and_the_old_one_keeps_serving(setup):
    tmp, endpoints = setup
    policy = write_policy(tmp / "p", endpoints)
    router = start_router(tmp, policy)
    try:
        before = _version(router)
        (policy / "policy.yaml").write_text("rules:\n  - id: x\n    frm: [DE]\n")
        rejected = router.admin("POST", "/_geopin/reload")
        assert rejected.status_code == 422
        error = rejected.json()["error"]
        assert error["code"] == "reload_rejected" and error["version"] == before
        assert any(p["line"] == 3 and p["file"].endswith("policy.yaml") for p in error["problems"])
        state = router.admin("GET", "/_geopin/policy").json()
        assert state["version"] == before
        assert "policy.yaml:3:" in state["load_error"]["message"]
        ok = router.post(headers=router.headers(country="SE"))
        assert ok.status_code == 200  # still served, under the old policy

        # Fixed: only Germany may serve now. The swap is whole.
        write_policy(tmp / "p", endpoints[1:])
        reloaded = router.admin("POST", "/_geopin/reload")
        assert reloaded.status_code == 200 and reloaded.json()["previous_version"] == before
        assert router.admin("GET", "/_geopin/policy").json()["load_error"] is None
        after = router.post(headers=router.headers(country="SE"))
        assert after.headers["x-geopin-endpoint"] == "eu-de"
    finally:
        router.stop()


def test_file_changes_are_picked_up_by_polling(setup):
    tmp, endpoints = setup
    policy = write_policy(tmp / "p", endpoints)
    router = start_router(tmp, policy, reload={"poll_interval_s": 0.1})
    try:
        before = _version(router)
        write_policy(tmp / "p", endpoints[1:])
        deadline = time.monotonic() + 10
        while _version(router) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _version(router) != before
        response = router.post(headers=router.headers(country="SE"))
        assert response.headers["x-geopin-endpoint"] == "eu-de"
    finally:
        router.stop()


def test_in_flight_requests_finish_under_the_policy_they_started_with(tmp_path, mocks):
    slow = mocks("eu-se", stream_chunks=10, chunk_delay_ms=100)
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", slow.url + "/v1", "SE")])
    router = start_router(tmp_path, policy)
    try:
        with httpx.stream(
            "POST",
            router.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [], "stream": True},
            headers=router.headers(country="SE"),
            timeout=30,
        ) as response:
            chunks = response.iter_raw()
            next(chunks)
            # The endpoint leaves the policy mid-stream; this stream still completes.
            write_policy(tmp_path / "p", [endpoint_yaml("other", "http://127.0.0.1:9/v1", "SE")])
            assert router.admin("POST", "/_geopin/reload").status_code == 200
            rest = b"".join(chunks)
        assert rest.rstrip().endswith(b"data: [DONE]")
        refused = router.post(headers=router.headers(country="SE"))
        assert refused.status_code == 503  # new requests use the new policy
    finally:
        router.stop()


def test_sighup_reloads(tmp_path, mocks):
    """SIGHUP in a real `geopin serve` process."""
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(create_audit_engine(url))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "GEOPIN_LISTEN": f"127.0.0.1:{port}",
        "GEOPIN_POLICY_DIR": str(policy),
        "GEOPIN_AUDIT_DATABASE_URL": url,
        "GEOPIN_ADMIN_TOKEN": "t",
        "GEOPIN_RELOAD_POLL_INTERVAL_S": "0",
        "GEOPIN_PROBES_ENABLED": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from geopin.cli import main; main()", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def version() -> str | None:
            try:
                return httpx.get(
                    base + "/_geopin/policy", headers={"authorization": "Bearer t"}
                ).json()["version"]
            except httpx.HTTPError:
                return None

        deadline = time.monotonic() + 20
        while (before := version()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert before is not None
        write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE", priority=3)])
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while version() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert version() not in (before, None)
    finally:
        process.terminate()
        process.wait(20)


def test_a_new_geoip_database_and_a_revoked_key_take_effect_on_reload(setup, caplog):
    tmp, endpoints = setup
    geoip = tmp / "city.mmdb"
    write_mmdb(geoip, {"203.0.113.0/24": city_record("SE", eu=True)})
    router = start_router(
        tmp, write_policy(tmp / "p", endpoints), geoip_db=str(geoip),
        trusted_proxies=["127.0.0.1"], trusted_cdns=[],
    )  # fmt: skip
    forwarded = {"x-forwarded-for": "203.0.113.9"}  # from a trusted proxy: believed
    try:
        answer = router.post(headers=router.headers(**forwarded))
        assert answer.headers["x-geopin-endpoint"] == "eu-se"

        # The database is replaced the way a GeoIP updater does: written aside, renamed in.
        write_mmdb(tmp / "next.mmdb", {"203.0.113.0/24": city_record("DE", eu=True)})
        os.replace(tmp / "next.mmdb", geoip)
        assert router.admin("POST", "/_geopin/reload").status_code == 200
        answer = router.post(headers=router.headers(**forwarded))
        assert answer.headers["x-geopin-endpoint"] == "eu-de"

        # A broken database is refused, logged, shown; the one loaded keeps serving.
        geoip.write_bytes(b"not a database")
        caplog.set_level("ERROR", logger="geopin")
        assert router.admin("POST", "/_geopin/reload").status_code == 422
        assert "city.mmdb" in router.admin("GET", "/_geopin/policy").json()["load_error"]["message"]
        assert any("reload (admin API) rejected" in r.getMessage() for r in caplog.records)
        answer = router.post(headers=router.headers(**forwarded))
        assert answer.headers["x-geopin-endpoint"] == "eu-de"
        write_mmdb(geoip, {"203.0.113.0/24": city_record("DE", eu=True)})

        # A key revoked in the keys file stops working at the reload; a new one starts.
        old = router.keys["t1"]
        with KeyStore.editing(tmp / "keys.json") as store:
            store.revoke(old.split("_")[1])
            new = store.create("t1")[1]
        assert (
            router.post(headers={"authorization": f"Bearer {old}", **forwarded}).status_code == 200
        )
        assert router.admin("POST", "/_geopin/reload").status_code == 200
        revoked = router.post(headers={"authorization": f"Bearer {old}", **forwarded})
        assert revoked.status_code == 401
        assert (
            router.post(headers={"authorization": f"Bearer {new}", **forwarded}).status_code == 200
        )
    finally:
        router.stop()


def test_a_request_still_uploading_at_a_reload_is_decided_under_the_policy_it_began_with(setup):
    tmp, endpoints = setup
    policy = write_policy(tmp / "p", endpoints)
    router = start_router(tmp, policy)
    host, port = router.url.removeprefix("http://").split(":")
    body = b'{"model": "gpt-4o", "messages": []}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"CF-IPCountry: SE\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (router.keys["t1"].encode(), len(body))
    )
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head + body[:10])  # the request has begun; its body is not all here
            time.sleep(0.3)
            write_policy(tmp / "p", endpoints[1:])  # Sweden leaves the policy meanwhile
            assert router.admin("POST", "/_geopin/reload").status_code == 200
            sock.sendall(body[10:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b"x-geopin-endpoint: eu-se" in answer.lower()  # the policy it started under
        later = router.post(headers=router.headers(country="SE"))
        assert later.headers["x-geopin-endpoint"] == "eu-de"  # a new request: the new policy
    finally:
        router.stop()
