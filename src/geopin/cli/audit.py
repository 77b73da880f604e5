"""``geopin audit``: keys, sequencing, verification, proofs, queries and retention."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from geopin.cli.db import db_option, open_engine
from geopin.errors import GeopinError, PolicyError

EXIT_FAILED = 1


@click.group()
def audit() -> None:
    """Query, verify and prove the audit log."""


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except PolicyError as exc:
        raise click.ClickException("\n".join(str(p) for p in exc.problems)) from None
    except GeopinError as exc:
        raise click.ClickException(str(exc)) from None


# ---- keys and sequencing -----------------------------------------------------------------


@audit.command()
@click.option("--name", required=True, help="The log's origin, e.g. audit.example.com/geopin.")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="Private key file."
)
@click.option("--public-out", type=click.Path(dir_okay=False), help="Default: OUT.pub.")
def keygen(name: str, out: str, public_out: str | None) -> None:
    """Create the Ed25519 checkpoint signing key (mode 0600) and its public verifier key."""
    from geopin.audit.checkpoint import SigningKey

    def run() -> str:
        try:
            key = SigningKey.generate(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--name") from None
        key.save(out)
        text = key.verifier().text()
        Path(public_out or f"{out}.pub").write_text(text + "\n")
        return text

    text = _guard(run)
    click.echo(text)
    click.echo(
        f"private key: {out} (keep it secret); public key: {public_out or out + '.pub'}", err=True
    )


key_option = click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False),
    envvar="GEOPIN_AUDIT_SIGNING_KEY",
    help="Signing key for checkpoints (env GEOPIN_AUDIT_SIGNING_KEY).",
)
checkpoints_option = click.option(
    "--checkpoints",
    "checkpoint_path",
    type=click.Path(dir_okay=False),
    envvar="GEOPIN_AUDIT_CHECKPOINT_FILE",
    help="External checkpoint file (env GEOPIN_AUDIT_CHECKPOINT_FILE).",
)


def _sequencer(url: str, key_path: str | None, checkpoint_path: str | None):
    from geopin.audit.checkpoint import SigningKey
    from geopin.audit.sequencer import Sequencer

    key = SigningKey.load(key_path) if key_path else None
    return Sequencer(open_engine(url), signing_key=key, checkpoint_file=checkpoint_path)


@audit.command()
@db_option
@key_option
@checkpoints_option
@click.option(
    "--checkpoint/--no-checkpoint",
    "force",
    default=True,
    show_default=True,
    help="Sign a checkpoint now if the log grew (needs --key).",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep sequencing as records arrive, until SIGTERM or Ctrl-C (then a last pass).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=0.25,
    show_default=True,
    help="With --follow: seconds between passes.",
)
def sequence(
    url: str,
    key_path: str | None,
    checkpoint_path: str | None,
    force: bool,
    follow: bool,
    interval: float,
) -> None:
    """Sequence pending records into the log now, and sign a checkpoint.

    With --follow it runs as a service, the sequencer the routers would otherwise run in
    their own processes (set audit.sequencer: false in them): checkpoints are signed every
    checkpoint interval as in `geopin serve`, and a last one over everything on the way out.
    """
    if follow:
        _guard(lambda: _follow(_sequencer(url, key_path, checkpoint_path), interval))
        if key_path is None:
            click.echo("no --key: no checkpoint signed", err=True)
        return

    def run():
        return _sequencer(url, key_path, checkpoint_path).run_once(
            force_checkpoint=force, wait=True
        )

    result = _guard(run)
    click.echo(f"sequenced {result.sequenced} records; tree size {result.tree_size}")
    if result.duplicates:
        click.echo(f"dropped {result.duplicates} pending duplicates of sequenced records")
    if result.checkpoint is not None:
        click.echo(f"signed checkpoint: size {result.checkpoint.size}")
    elif key_path is None:
        click.echo("no --key: no checkpoint signed", err=True)


def _follow(sequencer: Any, interval: float) -> None:
    import asyncio
    import logging
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"sequencing every {interval}s until SIGTERM or Ctrl-C", err=True)
        await sequencer.run(stop, poll_interval_s=interval)

    asyncio.run(main())
    click.echo("stopped: everything pending was sequenced", err=True)


# ---- verification and proofs -------------------------------------------------------------


def _verifier(text: str | None):
    from geopin.audit.checkpoint import VerifierKey

    return VerifierKey.load(text) if text else None


public_key_option = click.option(
    "--public-key",
    envvar="GEOPIN_AUDIT_PUBLIC_KEY",
    help="Verifier key: a file or the key text (env GEOPIN_AUDIT_PUBLIC_KEY).",
)


@audit.command()
@db_option
@public_key_option
@checkpoints_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def verify(url: str, public_key: str | None, checkpoint_path: str | None, fmt: str) -> None:
    """Verify every record, node and checkpoint. Exits 0 only when everything verifies."""
    from geopin.audit.verify import format_report, verify_log

    report = _guard(
        lambda: verify_log(
            open_engine(url),
            verifier=_verifier(public_key),
            checkpoint_file=checkpoint_path,
        )
    )
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report))
    if not report.ok:
        sys.exit(EXIT_FAILED)


@audit.command()
@click.argument("decision_id")
@db_option
@click.option("--kind", type=click.Choice(["decision", "outcome"]), default="decision")
def proof(decision_id: str, url: str, kind: str) -> None:
    """Print the proof bundle (JSON) of a decision's record, for offline checking."""
    from geopin.audit.store import AuditStore

    bundle = _guard(lambda: AuditStore(open_engine(url)).proof_bundle(decision_id, kind=kind))
    click.echo(json.dumps(bundle, indent=2, sort_keys=True))


@audit.command("verify-proof")
@click.argument("file", type=click.File("r"))
@click.option(
    "--public-key",
    required=True,
    envvar="GEOPIN_AUDIT_PUBLIC_KEY",
    help="Verifier key: a file or the key text.",
)
def verify_proof(file: io.TextIOWrapper, public_key: str) -> None:
    """Check a proof bundle offline, with no database ('-' reads standard input)."""
    from geopin.audit.proof import verify_bundle

    try:
        bundle = json.load(file)
    except ValueError as exc:
        raise click.ClickException(f"{file.name}: not a JSON proof bundle: {exc}") from None
    checkpoint = _guard(lambda: verify_bundle(bundle, _verifier(public_key)))
    record = bundle.get("record", {})
    click.echo(
        f"OK: record {record.get('id')} ({record.get('kind')} of decision "
        f"{record.get('decision_id')}) is entry {bundle.get('seq')} of {checkpoint.origin}, "
        f"in the checkpoint of size {checkpoint.size} signed by {_verifier(public_key).name}"
    )


# ---- queries -----------------------------------------------------------------------------

_MULTI = {
    "country": "Client country (ISO 3166-1 alpha-2).",
    "subdivision": "Client subdivision (ISO 3166-2, e.g. CA-QC).",
    "tenant": "Tenant.",
    "model": "Model name as the client asked.",
    "endpoint": "Endpoint id that processed the request.",
    "processing_country": "Country where it was processed.",
    "action": "route or deny.",
    "rule": "A rule that matched.",
    "policy_version": "Policy version.",
    "kind": "decision, outcome or prune.",
    "decision_id": "Decision id.",
    "object": "An upstream object (file-..., resp_..., batch_...) the call made or named.",
}


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for name, help_text in reversed(_MULTI.items()):
        flag = "--" + name.replace("_", "-")
        fn = click.option(flag, name, multiple=True, help=help_text + " Repeat or comma-separate.")(
            fn
        )
    fn = click.option(
        "--policy",
        "policy_dir",
        type=click.Path(exists=True),
        help="Policy directory whose jurisdictions --jurisdiction names.",
    )(fn)
    fn = click.option(
        "--jurisdiction", multiple=True, help="Client location in this jurisdiction of --policy."
    )(fn)
    fn = click.option("--until", help="Before this ISO datetime (a date includes its whole day).")(
        fn
    )
    fn = click.option("--since", help="From this ISO date or datetime (UTC unless stated).")(fn)
    fn = click.option(
        "--sequence",
        "sequence_first",
        is_flag=True,
        help="Sequence pending records first, so they are included.",
    )(fn)
    return db_option(fn)


def _filters(since, until, jurisdiction, policy_dir, values):
    from geopin.audit.query import Filters

    places = None
    if jurisdiction:
        if not policy_dir:
            raise click.UsageError("--jurisdiction needs --policy DIR to know its countries")
        from geopin.policy.loader import load_policy

        compiled = load_policy(policy_dir)
        for name in _split(jurisdiction):
            if name not in compiled.jurisdictions:
                known = ", ".join(sorted(compiled.jurisdictions))
                raise click.BadParameter(
                    f"{name!r} is not a jurisdiction of {policy_dir} ({known})",
                    param_hint="--jurisdiction",
                )
            found = compiled.jurisdictions[name]
            places = found if places is None else places.union(found)
    return Filters.build(
        since=since, until=until, places=places, **{k: _split(v) for k, v in values.items()}
    )


def _split(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(part.strip() for v in values for part in v.split(",") if part.strip())


def _note_pending(pending: int) -> None:
    if pending:
        click.echo(
            f"note: {pending} records are pending (not yet sequenced) and not included; "
            "run `geopin audit sequence` or pass --sequence to include them",
            err=True,
        )


def _maybe_sequence(url: str, sequence_first: bool) -> None:
    if sequence_first:
        _guard(lambda: _sequencer(url, None, None).run_once(wait=True))


_TABLE_COLUMNS = (
    "seq",
    "ts",
    "kind",
    "tenant",
    "country",
    "subdivision",
    "model",
    "action",
    "endpoint",
    "processing_country",
    "policy_version",
    "decision_id",
)


@audit.command()
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--cursor", help="Resume after the page that printed this cursor.")
def query(
    url, sequence_first, since, until, jurisdiction, policy_dir, fmt, limit, cursor, **values
):
    """List matching records in sequence order, a page at a time."""
    from geopin.audit.query import query_records

    _maybe_sequence(url, sequence_first)

    def run():
        filters = _filters(since, until, jurisdiction, policy_dir, values)
        return query_records(open_engine(url), filters, limit=limit, cursor=cursor)

    page = _guard(run)
    if fmt == "jsonl":
        for row in page.rows:
            click.echo(json.dumps({"seq": row["seq"], "record": row["record"]}, sort_keys=True))
    else:
        columns = (*_TABLE_COLUMNS, "rules", "object")  # new columns go last, for CSV readers
        table = [[_cell(row, c) for c in columns] for row in page.rows]
        _emit(columns, table, fmt)
    if page.next_cursor:
        click.echo(f"next page: --cursor {page.next_cursor}", err=True)
    _note_pending(page.pending)


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "rules":
        record = row.get("record") or {}
        return ";".join(r.get("id", "") for r in record.get("rules") or [])
    value = row.get(column)
    if column == "ts" and row.get("record") is None and row.get("kind") != "prune":
        return f"{value} (pruned)"
    return "" if value is None else str(value)


def _emit(columns: Sequence[str], rows: list[list[Any]], fmt: str) -> None:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
        return
    cells = [list(columns)] + [["-" if c in ("", None) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@audit.command()
@filter_options
@click.option(
    "--by",
    "by",
    required=True,
    help="Field(s) to group by, comma-separated: "
    "country, processing_country, tenant, model, endpoint, action, rule, "
    "policy_version, kind, subdivision, decision_id, day, month.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
def stats(url, sequence_first, since, until, jurisdiction, policy_dir, by, fmt, **values):
    """Count matching records grouped by fields. Counts decision records (one per request)
    unless --kind says otherwise."""
    from geopin.audit.query import stats as run_stats

    _maybe_sequence(url, sequence_first)
    if not values.get("kind"):
        values["kind"] = ("decision",)
    fields = _split([by])

    def run():
        filters = _filters(since, until, jurisdiction, policy_dir, values)
        return run_stats(open_engine(url), filters, fields)

    result = _guard(run)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "by": list(result.by),
                    "groups": result.groups,
                    "total": result.total,
                    "pending": result.pending,
                },
                indent=2,
            )
        )
    else:
        columns = (*result.by, "count")
        _emit(columns, [[g[c] for c in columns] for g in result.groups], fmt)
        if fmt == "table":
            click.echo(f"total {result.total}")
    _note_pending(result.pending)


# ---- retention ---------------------------------------------------------------------------


@audit.command()
@click.option("--before", required=True, help="Prune records before this ISO date or datetime.")
@db_option
@key_option
@checkpoints_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def prune(
    before: str, url: str, key_path: str | None, checkpoint_path: str | None, yes: bool
) -> None:
    """Remove record bodies before a date; leaf hashes stay so the log still verifies."""
    from geopin.audit.prune import prune as run_prune

    if not yes:
        click.confirm(f"Remove the bodies of audit records before {before}?", abort=True)
    result = _guard(lambda: run_prune(open_engine(url), before))
    click.echo(
        f"pruned {result.pruned} records before {result.before} (below seq {result.seq_end})"
    )
    done = _guard(
        lambda: _sequencer(url, key_path, checkpoint_path).run_once(
            force_checkpoint=True, wait=True
        )
    )
    click.echo(f"prune recorded; tree size {done.tree_size}")
