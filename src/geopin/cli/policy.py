"""``geopin policy``: validate, explain and test policies; print their JSON Schema."""

from __future__ import annotations

import json
import sys
from ipaddress import ip_address
from pathlib import Path

import click

from geopin.errors import GeoIPError
from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.policy.decision import RequestContext
from geopin.policy.places_iso import is_country, is_subdivision

DEFAULT_DIR = "policies"
EXIT_INVALID = 1


@click.group()
def policy() -> None:
    """Author and check residency policies."""


def _policy_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    return value or DEFAULT_DIR


@policy.command()
@click.argument("directory", required=False, callback=_policy_dir)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(directory: str, fmt: str, strict: bool) -> None:
    """Validate the policy in DIRECTORY (default: ./policies).

    Prints every problem as file:line:column. Exits 0 when valid, 1 on errors (or on
    warnings with --strict).
    """
    from geopin.policy.loader import load_with_problems

    compiled, problems = load_with_problems(directory)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    failed = bool(errors) or (strict and bool(warnings))
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "valid": not errors,
                    "version": compiled.version if compiled else None,
                    "files": list(compiled.files) if compiled else [],
                    "problems": [p.to_dict() for p in problems],
                },
                indent=2,
            )
        )
    else:
        for problem in problems:
            click.echo(str(problem), err=True)
        if errors:
            click.echo(f"{directory}: invalid: {len(errors)} error(s), {len(warnings)} warning(s)")
        else:
            assert compiled is not None
            click.echo(
                f"{directory}: valid (version {compiled.version}, {len(compiled.files)} files, "
                f"{len(compiled.endpoints)} endpoints, {len(compiled.all_rules())} rules, "
                f"{len(warnings)} warning(s))"
            )
    if failed:
        sys.exit(EXIT_INVALID)


@policy.command()
@click.option("--policy", "directory", default=DEFAULT_DIR, show_default=True)
@click.option("--ip", help="Client address, located with the GeoIP database or embedded data.")
@click.option("--country", help="Client country (ISO 3166-1 alpha-2), instead of --ip.")
@click.option("--subdivision", help="Client subdivision (ISO 3166-2, e.g. CA-QC).")
@click.option("--unknown", "unknown_location", is_flag=True, help="An unknown location.")
@click.option("--tenant")
@click.option("--model", help="The model the call names (omitted: a call that names none).")
@click.option("--data-class")
@click.option("--geoip-db", type=click.Path(dir_okay=False), help="A MaxMind .mmdb file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain(
    directory: str,
    ip: str | None,
    country: str | None,
    subdivision: str | None,
    unknown_location: bool,
    tenant: str | None,
    model: str | None,
    data_class: str | None,
    geoip_db: str | None,
    as_json: bool,
) -> None:
    """Explain the decision for one hypothetical request: the location and its source, every
    rule's verdict, the permitted places, the candidates in order and why each other endpoint
    was left out."""
    from geopin.policy.explain import explain as run_explain

    compiled = _load_or_exit(directory)
    location = _location(ip, country, subdivision, unknown_location, geoip_db)
    ctx = RequestContext(location=location, model=model, tenant=tenant, data_class=data_class)
    explanation = run_explain(compiled, ctx)
    if as_json:
        click.echo(json.dumps(explanation.to_dict(), indent=2))
    else:
        from geopin.cli.render import render_explanation

        click.echo(render_explanation(explanation.to_dict(), compiled))


@policy.command("test")
@click.argument("directory", required=False, callback=_policy_dir)
@click.option("--geoip-db", type=click.Path(dir_okay=False), help="For cases given by 'ip'.")
@click.option("-v", "--verbose", is_flag=True, help="List passing cases too.")
def test_cases(directory: str, geoip_db: str | None, verbose: bool) -> None:
    """Run the decision cases in DIRECTORY/tests/*.yaml against the policy in DIRECTORY."""
    from geopin.cli.render import render_explanation
    from geopin.policy.cases import case_files, run_cases

    compiled = _load_or_exit(directory)
    files = case_files(directory)
    if not files:
        click.echo(f"{directory}/tests: no case files (*.yaml) found", err=True)
        sys.exit(EXIT_INVALID)
    report = run_cases(compiled, files, locate=lambda ip: _locate_ip(ip, geoip_db))
    for problem in report.problems:
        click.echo(str(problem), err=True)
    failed = [r for r in report.results if not r.passed]
    for result in report.results:
        if result.passed and verbose:
            click.echo(f"PASS {result.position}: {result.note}")
    for result in failed:
        click.echo(f"FAIL {result.position}: {result.note}")
        for failure in result.failures:
            click.echo(f"     {failure}")
        if result.explanation is not None:
            trace = render_explanation(result.explanation.to_dict(), compiled)
            click.echo("     " + trace.replace("\n", "\n     "))
    passed = len(report.results) - len(failed)
    click.echo(f"{passed} passed, {len(failed)} failed")
    if not report.ok:
        sys.exit(EXIT_INVALID)


@policy.command()
def schema() -> None:
    """Print the JSON Schema of policy files (for editor completion)."""
    from geopin.policy.model import PolicyFile

    document = PolicyFile.model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "geopin policy file"
    click.echo(json.dumps(document, indent=2))


def _load_or_exit(directory: str):
    from geopin.policy.loader import load_with_problems

    compiled, problems = load_with_problems(directory)
    if compiled is None:
        for problem in problems:
            click.echo(str(problem), err=True)
        click.echo(
            f"{directory}: invalid policy; run `geopin policy validate {directory}`", err=True
        )
        sys.exit(EXIT_INVALID)
    return compiled


def _location(
    ip: str | None,
    country: str | None,
    subdivision: str | None,
    unknown_location: bool,
    geoip_db: str | None,
) -> Location:
    given = sum(x is not None for x in (ip, country)) + unknown_location
    if given > 1:
        raise click.UsageError("give only one of --ip, --country or --unknown")
    if ip is not None:
        return _locate_ip(ip, geoip_db)
    if unknown_location:
        return UNKNOWN
    if subdivision is not None:
        subdivision = subdivision.upper()
        if not is_subdivision(subdivision):
            raise click.BadParameter(
                f"'{subdivision}' is not an ISO 3166-2 code", param_hint="--subdivision"
            )
        country = country or subdivision.split("-")[0]
    if country is None:
        raise click.UsageError("give --ip, --country (optionally with --subdivision) or --unknown")
    country = country.upper()
    if not is_country(country):
        raise click.BadParameter(
            f"'{country}' is not an ISO 3166-1 alpha-2 code", param_hint="--country"
        )
    if subdivision is not None and not subdivision.startswith(country + "-"):
        raise click.BadParameter(f"{subdivision} is not in {country}", param_hint="--subdivision")
    return Location(country, subdivision, LocationSource.DECLARED)


def _locate_ip(ip: str, geoip_db: str | None) -> Location:
    from geopin.geo.resolvers import open_resolver

    try:
        address = ip_address(ip.strip())
    except ValueError:
        raise click.BadParameter(f"'{ip}' is not an IP address", param_hint="--ip") from None
    try:
        resolver = open_resolver(geoip_db)
    except GeoIPError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return resolver.lookup(address)
    except GeoIPError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        resolver.close()


__all__ = ["policy", "Path"]
