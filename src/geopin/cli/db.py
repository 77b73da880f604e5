"""``geopin db``: create and upgrade the audit database schema."""

from __future__ import annotations

import click
from sqlalchemy.engine import Engine

from geopin.audit.db import DEFAULT_URL, URL_ENVVAR, create_audit_engine, redact
from geopin.errors import GeopinError

db_option = click.option(
    "--db",
    "url",
    envvar=URL_ENVVAR,
    default=DEFAULT_URL,
    show_default=True,
    help=f"Audit database URL (SQLite file or postgresql+psycopg://...; env {URL_ENVVAR}).",
)


def open_engine(url: str) -> Engine:
    """An engine for this command, disposed (its connections closed) when the command ends."""
    engine = create_audit_engine(url)
    click.get_current_context().call_on_close(engine.dispose)
    return engine


@click.group()
def db() -> None:
    """Manage the audit database schema."""


@db.command()
@db_option
def upgrade(url: str) -> None:
    """Create the audit schema, or bring it up to this geopin's version."""
    from geopin.audit import migrate

    try:
        engine = open_engine(url)
        before = migrate.current_revision(engine)
        migrate.upgrade(engine)
        after = migrate.current_revision(engine)
    except GeopinError as exc:
        raise click.ClickException(str(exc)) from None
    if before == after:
        click.echo(f"{redact(url)}: already at {after}")
    else:
        click.echo(f"{redact(url)}: upgraded {before or 'empty'} -> {after}")


@db.command()
@db_option
def status(url: str) -> None:
    """Show the schema version; exit 1 if `geopin db upgrade` is needed."""
    from geopin.audit import migrate

    try:
        state = migrate.status(open_engine(url))
    except GeopinError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"database: {redact(url)}")
    click.echo(f"schema:   {state.current or 'none'}")
    click.echo(f"geopin:   {state.head}")
    if not state.up_to_date:
        click.echo("out of date: run `geopin db upgrade`", err=True)
        raise SystemExit(1)
    click.echo("up to date")
