"""The router's settings: a YAML file (``geopin serve --config geopin.yaml``) and environment
variables, the environment winning.

Every setting has one environment variable, named from its path: ``GEOPIN_`` and the path in
upper case joined by ``_`` (``upstream.read_timeout_s`` is ``GEOPIN_UPSTREAM_READ_TIMEOUT_S``).
Lists are comma-separated, mappings ``key=value`` pairs separated by commas. Unknown keys are
errors reported with their ``file:line:col``. Secrets are ``SecretStr``: printing the settings
never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from geopin.errors import ConfigError
from geopin.telemetry.settings import TelemetrySettings

ENV_PREFIX = "GEOPIN_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthSettings(_Section):
    allow_anonymous: bool = Field(
        default=False, description="Serve requests without a router key (their tenant is none)."
    )


class LimitSettings(_Section):
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest request body accepted (413 beyond)."
    )


class UpstreamSettings(_Section):
    connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Time to connect to an endpoint."
    )
    read_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Time to wait for the response head and for each later chunk.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Endpoints tried per request (failover)."
    )
    max_idle_connections: int = Field(
        default=64, ge=0, description="Keep-alive connections pooled per endpoint origin."
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with a 503.")


class ProbeSettings(_Section):
    enabled: bool = Field(default=True, description="Probe every endpoint actively.")
    interval_s: float = Field(
        default=10.0, gt=0, description="Time between probes of one endpoint."
    )
    timeout_s: float = Field(default=2.0, gt=0, description="Time a probe may take.")


class ReloadSettings(_Section):
    poll_interval_s: float = Field(
        default=2.0,
        ge=0,
        description="How often policy, GeoIP and keys files are checked (0: never).",
    )


class AuditSettings(_Section):
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///geopin-audit.db"),
        description="SQLAlchemy URL of the audit database (SQLite or PostgreSQL).",
    )
    spool: Path | None = Field(
        default=None, description="File where records wait while the database is down (else: 503)."
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL",
        description="SQLite durability: NORMAL survives a killed process, FULL a power loss.",
    )
    client_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for client addresses in records (random per start if unset).",
    )
    sequencer: bool = Field(
        default=True,
        description="Sequence pending records into the Merkle log in this router process.",
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 signing key file (geopin audit keygen); no checkpoints if unset.",
    )
    checkpoint_file: Path | None = Field(
        default=None, description="File every signed checkpoint is also appended to."
    )
    checkpoint_every: int = Field(
        default=1000, ge=1, description="Records after which a checkpoint is signed."
    )
    checkpoint_interval_s: float = Field(
        default=10.0, gt=0, description="Time after which new records get a signed checkpoint."
    )


class ObjectSettings(_Section):
    shared: bool = Field(
        default=True,
        description="Keep where made objects live in the audit database, for every router of it.",
    )
    retention_days: float = Field(
        default=30.0, gt=0, description="Days an object's endpoint is kept after it was made."
    )
    lookup_timeout_s: float = Field(
        default=0.5, gt=0, description="Time a lookup of an object's endpoint may take."
    )


class Settings(_Section):
    listen: str = Field(default="127.0.0.1:8080", description="Address and port to serve on.")
    workers: int = Field(default=1, ge=1, description="Worker processes.")
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="On SIGTERM, time requests and streams in flight get to finish.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    policy_dir: Path = Field(
        default=Path("policies"), description="Directory of policy YAML files."
    )
    geoip_db: Path | None = Field(
        default=None, description="MaxMind GeoIP2/GeoLite2 database (embedded RIR data if unset)."
    )
    trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description="Addresses or networks of proxies whose forwarding header is believed.",
    )
    forwarding_header: Literal["x-forwarded-for", "forwarded"] = Field(
        default="x-forwarded-for",
        description="The one header the trusted proxies write (the other is never read).",
    )
    trusted_cdns: tuple[str, ...] = Field(
        default=(),
        description="Addresses or networks of CDNs whose geolocation headers are believed.",
    )
    keys_file: Path | None = Field(default=None, description="Router API keys file (geopin keys).")
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin API (admin API off when unset)."
    )
    admin_token_file: Path | None = Field(
        default=None, description="File holding the admin token (instead of admin_token)."
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL of the blocked-by links in 451 answers (relative links if unset).",
    )
    endpoint_overrides: dict[str, str] = Field(
        default_factory=dict, description="Endpoint id to URL, replacing the policy's URL."
    )
    credential_files: dict[str, Path] = Field(
        default_factory=dict,
        description="Endpoint id to a file holding its credential, replacing the policy's.",
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    reload: ReloadSettings = Field(default_factory=ReloadSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    objects: ObjectSettings = Field(default_factory=ObjectSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        listen_address(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    def admin_token_value(self) -> str | None:
        """The admin token, from the setting or its file; None disables the admin API."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value() or None
        if self.admin_token_file is None:
            return None
        try:
            token = self.admin_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"admin_token_file {self.admin_token_file}: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"admin_token_file {self.admin_token_file} is empty")
        return token


def listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the YAML file at ``path`` (optional) overridden by the environment.

    Raises ConfigError listing every problem, one per line, each with where it is.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    positions: dict[tuple[str, ...], str] = {}
    shown = str(path) if path is not None else ""
    if path is not None:
        data, positions = _read_yaml(Path(path))
    for field_path, env_name in env_names().items():
        if env_name in environ:
            _assign(data, field_path, _from_env(field_path, environ[env_name]))
            positions[field_path] = f"${env_name}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err, positions, shown) for err in exc.errors()]
        raise ConfigError("\n".join(problems)) from None


def env_names() -> dict[tuple[str, ...], str]:
    """Every setting's path and its environment variable."""
    return {p: ENV_PREFIX + "_".join(p).upper() for p in _leaf_paths(Settings)}


def field_descriptions() -> Iterator[tuple[str, str, Any, str]]:
    """(dotted name, environment variable, default, description) of every setting."""
    for field_path, env in env_names().items():
        model: type[BaseModel] = Settings
        for part in field_path[:-1]:
            model = model.model_fields[part].annotation  # type: ignore[assignment]
        info = model.model_fields[field_path[-1]]
        default = info.get_default(call_default_factory=True)
        yield ".".join(field_path), env, default, info.description or ""


# -- helpers ----------------------------------------------------------------------------------


def _leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaf_paths(annotation, prefix + (name,))
        else:
            yield prefix + (name,)


def _annotation(field_path: tuple[str, ...]) -> Any:
    model: Any = Settings
    for part in field_path:
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _from_env(field_path: tuple[str, ...], raw: str) -> Any:
    annotation = _annotation(field_path)
    origin = get_origin(annotation)
    if origin in (tuple, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if origin is dict:
        pairs = {}
        for item in (i.strip() for i in raw.split(",")):
            if item:
                key, sep, value = item.partition("=")
                pairs[key.strip()] = value.strip() if sep else None
        return pairs
    if raw == "" and type(None) in get_args(annotation):
        return None
    return raw


def _assign(data: dict[str, Any], field_path: tuple[str, ...], value: Any) -> None:
    for part in field_path[:-1]:
        child = data.get(part)
        if not isinstance(child, dict):
            child = data[part] = {}
        data = child
    data[field_path[-1]] = value


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror}") from exc
    try:
        root = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: settings-syntax: {problem}") from None
    if root is None:
        return {}, {}
    if not isinstance(root, dict):
        raise ConfigError(f"{path}:1:1: settings-type: the settings file must be a mapping")
    positions: dict[tuple[str, ...], str] = {}
    _index(root, (), path, positions)
    return _plain(root), positions


def _index(node: Any, at: tuple[str, ...], path: Path, out: dict[tuple[str, ...], str]) -> None:
    if not isinstance(node, dict):
        return
    for key in node:
        try:
            line, col = node.lc.key(key)  # type: ignore[attr-defined]
            out[at + (str(key),)] = f"{path}:{line + 1}:{col + 1}"
        except (AttributeError, KeyError, TypeError):
            out[at + (str(key),)] = str(path)
        _index(node[key], at + (str(key),), path, out)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _describe(error: Mapping[str, Any], positions: dict[tuple[str, ...], str], file: str) -> str:
    loc = tuple(str(p) for p in error["loc"])
    where = None
    for end in range(len(loc), 0, -1):
        where = positions.get(loc[:end])
        if where:
            break
    dotted = ".".join(loc) or "(settings)"
    if error["type"] == "extra_forbidden":
        return f"{where or file or 'settings'}: settings-unknown-key: unknown setting '{dotted}'"
    return f"{where or file or 'settings'}: settings-invalid: {dotted}: {error['msg']}"
