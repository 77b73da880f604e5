"""``geopin keys``: create, list and revoke the router API keys that identify tenants."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from geopin.errors import ConfigError
from geopin.keys import DEFAULT_KEYS_FILE, KEYS_FILE_ENV, KeyEntry, KeyNotFound, KeyStore

F = TypeVar("F", bound=Callable[..., Any])


class KeysCommandError(click.ClickException):
    """A one-line ``Error: ...`` on stderr and exit status 2, for bad input or a bad keys file."""

    exit_code = 2


def _keys_file_option(command: F) -> F:
    return click.option(
        "--keys-file",
        type=click.Path(dir_okay=False),
        envvar=KEYS_FILE_ENV,
        default=DEFAULT_KEYS_FILE,
        show_default=True,
        show_envvar=True,
        help="The keys file (JSON, holding only hashes of the keys).",
    )(command)


@click.group()
def keys() -> None:
    """Manage router API keys: each one identifies a tenant."""


@keys.command()
@click.option("--tenant", required=True, help="The tenant the key authenticates as.")
@click.option("--name", default=None, help="A note to recognise the key by, e.g. its holder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, key included.")
@_keys_file_option
def create(tenant: str, name: str | None, as_json: bool, keys_file: str) -> None:
    """Create a key for TENANT and print it. It is shown this once and never stored."""
    try:
        with KeyStore.editing(keys_file) as store:
            entry, key = store.create(tenant, name)
    except (ConfigError, ValueError) as exc:
        raise KeysCommandError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**_fields(entry), "key": key}, indent=2))
        return
    # The key alone on stdout, so `KEY=$(geopin keys create ...)` captures just it.
    click.echo(key)
    click.echo(
        f"Created key {entry.key_id} for tenant {entry.tenant} in {keys_file}. "
        "Keep it now: geopin stores only its hash.",
        err=True,
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@_keys_file_option
def list_keys(as_json: bool, keys_file: str) -> None:
    """List keys: id, tenant, name, creation and revocation times (never the keys)."""
    try:
        entries = KeyStore.load(keys_file).entries()
    except ConfigError as exc:
        raise KeysCommandError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([_fields(e) for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"No keys in {keys_file}.", err=True)
        return
    rows = [("KEY ID", "TENANT", "NAME", "CREATED", "REVOKED")]
    for e in entries:
        f = _fields(e)
        rows.append((e.key_id, e.tenant, e.name or "-", f["created_at"], f["revoked_at"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


@keys.command()
@click.argument("key_id")
@_keys_file_option
def revoke(key_id: str, keys_file: str) -> None:
    """Revoke the key KEY_ID: requests presenting it are refused from the next load on."""
    try:
        with KeyStore.editing(keys_file) as store:
            already = any(e.key_id == key_id and not e.active for e in store.entries())
            entry = store.revoke(key_id)
    except KeyNotFound as exc:
        raise KeysCommandError(str(exc.args[0])) from None
    except ConfigError as exc:
        raise KeysCommandError(str(exc)) from None
    when = _fields(entry)["revoked_at"]
    if already:
        click.echo(f"Key {key_id} (tenant {entry.tenant}) was already revoked at {when}.")
    else:
        click.echo(f"Revoked key {key_id} (tenant {entry.tenant}) at {when}.")


def _fields(entry: KeyEntry) -> dict[str, Any]:
    def stamp(moment: Any) -> str | None:
        return moment.isoformat().replace("+00:00", "Z") if moment else None

    return {
        "key_id": entry.key_id,
        "tenant": entry.tenant,
        "name": entry.name,
        "created_at": stamp(entry.created_at),
        "revoked_at": stamp(entry.revoked_at),
    }
