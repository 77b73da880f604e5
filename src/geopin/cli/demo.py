"""``geopin demo``: the router on the shipped policies, with a mock upstream per endpoint.

No database server and no GeoIP licence: the audit log is a SQLite file in a data directory
(temporary unless ``--data-dir`` is given) with a checkpoint signing key beside it; locations
come from a "CDN" on 127.0.0.2 (trusted for its ``CF-IPCountry`` header), and every endpoint's
URL is overridden to a local mock that says which endpoint it is.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import uvicorn

from geopin.audit.checkpoint import SigningKey
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.errors import GeopinError
from geopin.keys import KeyStore
from geopin.mock.server import RunningServer, serve_in_thread
from geopin.policy.decision import ProviderKind
from geopin.policy.loader import load_policy
from geopin.proxy.protocol import HttpProtocol
from geopin.settings import Settings

CDN_ADDRESS = "127.0.0.2"  # trusted as a CDN: its CF-IPCountry header locates the client
SPOOFED_IP = "81.2.69.142"  # a public address a client claims in X-Forwarded-For
ACME_TENANT = "acme-health-de"


@dataclass(frozen=True)
class DemoCall:
    title: str
    expect_status: int
    expect_text: str | None  # text the answer contains (headers are matched case-insensitively)
    argv: tuple[str, ...]

    def render(self) -> str:
        expect = f"HTTP {self.expect_status}"
        if self.expect_text:
            expect += f" with {self.expect_text}"
        return f"# {self.title}\n#   expect: {expect}\n{shlex.join(self.argv)}\n"


def demo_calls(base: str, key: str, acme_key: str, admin_token: str) -> list[DemoCall]:
    def chat(model: str, *extra: str, stream: bool = False, via_cdn: bool = True) -> tuple:
        body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]'
        body += ', "stream": true}' if stream else "}"
        argv = ["curl", "-si"] + (["-N"] if stream else [])
        if via_cdn:
            argv += ["--interface", CDN_ADDRESS]
        return (*argv, *extra, "-H", "Content-Type: application/json", "-d", body,
                f"{base}/v1/chat/completions")  # fmt: skip

    auth = ("-H", f"Authorization: Bearer {key}")
    return [
        DemoCall(
            "A client in Germany (its CDN says DE) is served inside the EEA, in Germany",
            200,
            "x-geopin-endpoint: azure-germanywestcentral",
            chat("gpt-4o", *auth, "-H", "CF-IPCountry: DE"),
        ),
        DemoCall(
            "A client in China is pinned to the endpoint in China",
            200,
            "x-geopin-endpoint: azure-chinaeast2",
            chat("gpt-4o", *auth, "-H", "CF-IPCountry: CN"),
        ),
        DemoCall(
            "A model with no deployment in China is refused there: 451 with the rule and law",
            451,
            '"rule": "cn-no-foreign-models"',
            chat("claude-sonnet-4-5", *auth, "-H", "CF-IPCountry: CN"),
        ),
        DemoCall(
            "The 451's Link (rel=blocked-by) answers the same router key: the rule's reason "
            "and legal basis",
            200,
            '"legal_basis":',
            ("curl", "-si", *auth, f"{base}/_geopin/policy/rules/cn-no-foreign-models"),
        ),
        DemoCall(
            "Spoofing from 127.0.0.1 (not a trusted proxy or CDN): X-Forwarded-For and "
            "CF-IPCountry are ignored, the loopback peer has no location, and the policy "
            "refuses unknown locations",
            451,
            '"rule": "defaults.unknown_location"',
            chat(
                "gpt-4o",
                *auth,
                "-H",
                f"X-Forwarded-For: {SPOOFED_IP}",
                "-H",
                "CF-IPCountry: DE",
                via_cdn=False,
            ),
        ),  # fmt: skip
        DemoCall(
            f"Tenant {ACME_TENANT} (from its router key) is kept in Germany, even from France",
            200,
            "x-geopin-endpoint: azure-germanywestcentral",
            chat("gpt-4o", "-H", f"Authorization: Bearer {acme_key}", "-H", "CF-IPCountry: FR"),
        ),
        DemoCall(
            "Declaring personal data from India keeps it in India (a data class only restricts)",
            200,
            "x-geopin-endpoint: openai-in",
            chat("gpt-4o", *auth, "-H", "CF-IPCountry: IN", "-H", "X-Geopin-Data-Class: pii"),
        ),
        DemoCall(
            "Streaming passes through event by event",
            200,
            "data: [DONE]",
            chat("gpt-4o-mini", *auth, "-H", "CF-IPCountry: SE", stream=True),
        ),
        DemoCall(
            "A file upload names no model: decided under every model's rules, and kept at "
            "the tenant's one home endpoint for its place, where later calls find it",
            200,
            "x-geopin-endpoint: azure-germanywestcentral",
            (
                "curl",
                "-si",
                "--interface",
                CDN_ADDRESS,
                *auth,
                "-H",
                "CF-IPCountry: DE",
                "-F",
                "purpose=batch",
                "-F",
                'file={"custom_id": "1"};filename=batch.jsonl',
                f"{base}/v1/files",
            ),
        ),  # fmt: skip
        DemoCall(
            "The models a client in Russia may use",
            200,
            '"id": "llama-3.1-8b-instruct"',
            (
                "curl",
                "-si",
                "--interface",
                CDN_ADDRESS,
                *auth,
                "-H",
                "CF-IPCountry: RU",
                f"{base}/v1/models",
            ),
        ),  # fmt: skip
        DemoCall(
            "No router key: 401",
            401,
            '"code": "invalid_api_key"',
            chat("gpt-4o", "-H", "CF-IPCountry: DE"),
        ),
        DemoCall(
            "Why? The admin API explains a hypothetical request",
            200,
            '"deny_rule":"ru-no-foreign-models"',
            (
                "curl",
                "-si",
                "-H",
                f"Authorization: Bearer {admin_token}",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"country": "RU", "model": "gpt-4o"}',
                f"{base}/_geopin/explain",
            ),
        ),  # fmt: skip
    ]


def shipped_policies() -> Path:
    repo = Path(__file__).resolve().parents[3] / "policies"
    return repo if repo.is_dir() else Path("policies")


@contextlib.contextmanager
def demo_setup(policy_dir: Path, workdir: Path) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Mocks running, keys, audit database and settings; yields (settings, secrets)."""
    policy = load_policy(policy_dir)
    mocks: list[RunningServer] = []
    try:
        overrides, credential_files = {}, {}
        for endpoint in policy.endpoints.values():
            mock = serve_in_thread(endpoint.id, models=tuple(sorted(endpoint.models.values())))
            mocks.append(mock)
            azure = endpoint.kind is ProviderKind.AZURE_OPENAI
            overrides[endpoint.id] = mock.url if azure else mock.url + "/v1"
            secret = workdir / f"{endpoint.id}.key"
            secret.write_text(f"demo-upstream-key-{endpoint.id}\n")
            credential_files[endpoint.id] = secret
        keys_file = workdir / "keys.json"
        with KeyStore.editing(keys_file) as store:
            _, key = store.create("demo", "demo key")
            _, acme_key = store.create(ACME_TENANT, "demo key of a tenant")
        audit_url = f"sqlite:///{workdir / 'audit.db'}"
        signing_key = workdir / "audit.key"
        if not signing_key.exists():
            key_pair = SigningKey.generate("demo.geopin.local/audit")
            key_pair.save(signing_key)
            (workdir / "audit.key.pub").write_text(key_pair.verifier().text() + "\n")
        engine = create_audit_engine(audit_url)
        upgrade(engine)
        engine.dispose()
        admin_token = secrets.token_urlsafe(18)
        settings = Settings.model_validate(
            {
                "policy_dir": policy_dir,
                "trusted_cdns": [CDN_ADDRESS],
                "keys_file": keys_file,
                "admin_token": admin_token,
                "endpoint_overrides": overrides,
                "credential_files": credential_files,
                "audit": {
                    "database_url": audit_url,
                    "signing_key": signing_key,
                    "checkpoint_file": workdir / "checkpoints.txt",
                    "checkpoint_interval_s": 1.0,
                },
                "log_level": "warning",
            }
        )
        yield settings, {"key": key, "acme_key": acme_key, "admin_token": admin_token}
    finally:
        for mock in mocks:
            mock.stop()


def audit_hint(workdir: Path) -> str:
    db = f"sqlite:///{workdir / 'audit.db'}"
    pub = workdir / "audit.key.pub"
    cps = workdir / "checkpoints.txt"
    return (
        "# The decision trail of these requests (in another terminal):\n"
        f"geopin audit query --db {db}\n"
        f"geopin audit verify --db {db} --public-key {pub} --checkpoints {cps}\n"
    )


@click.command("demo")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of the router (0: any free port).")  # fmt: skip
@click.option("--policy-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Policy directory (default: the shipped example policies).")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the audit log, its signing key, checkpoints and router keys here "
              "(default: a temporary directory removed on exit).")  # fmt: skip
def demo(port: int, policy_dir: Path | None, data_dir: Path | None) -> None:
    """Run the router on the shipped policies against local mock upstreams, and print curl
    lines to try. Runs until Ctrl-C."""
    from geopin.app import build_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="geopin-demo-"))
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = str(data_dir)
        try:
            with demo_setup(policy_dir or shipped_policies(), Path(tmp)) as (settings, keys):
                app = build_app(settings)
                click.echo(f"geopin demo: router on {base}, audit log and keys in {tmp}\n")
                click.echo(f"router key (tenant demo): {keys['key']}")
                click.echo(f"admin token: {keys['admin_token']}\n")
                for call in demo_calls(base, keys["key"], keys["acme_key"], keys["admin_token"]):
                    click.echo(call.render())
                click.echo(audit_hint(Path(tmp)))
                click.echo("Ctrl-C stops the demo.", nl=True)
                config = uvicorn.Config(app, loop="uvloop", http=HttpProtocol, access_log=False,
                                        log_level="warning", proxy_headers=False)  # fmt: skip
                uvicorn.Server(config).run(sockets=[sock])
        except GeopinError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            sock.close()
