"""``geopin geo``: look up where an address is, as the router would see it."""

from __future__ import annotations

import json

import click

from geopin.errors import GeoIPError
from geopin.geo.location import Location


class GeoCommandError(click.ClickException):
    """A one-line ``Error: ...`` on stderr and exit status 2, for bad input or a bad database."""

    exit_code = 2


@click.group()
def geo() -> None:
    """Geolocate addresses with geopin's resolvers."""


@geo.command()
@click.argument("ip")
@click.option(
    "--geoip-db",
    type=click.Path(dir_okay=False),
    envvar="GEOPIN_GEOIP_DB",
    help="A MaxMind GeoIP2/GeoLite2 Country or City .mmdb (default: the embedded RIR data).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lookup(ip: str, geoip_db: str | None, as_json: bool) -> None:
    """Print the location of IP: country, subdivision, EU membership, source and database."""
    from geopin.geo.client import parse_ip
    from geopin.geo.resolvers import open_resolver

    address = parse_ip(ip.strip())
    if address is None:
        raise GeoCommandError(f"{ip!r} is not an IP address")
    try:
        resolver = open_resolver(geoip_db)
    except GeoIPError as exc:
        raise GeoCommandError(str(exc)) from None
    try:
        location = resolver.lookup(address)
    except GeoIPError as exc:
        raise GeoCommandError(str(exc)) from None
    finally:
        resolver.close()
    fields = _fields(str(address), location)
    if as_json:
        click.echo(json.dumps(fields, indent=2, ensure_ascii=False))
        return
    click.echo(_text(fields))


def _fields(address: str, location: Location) -> dict[str, object]:
    from geopin.geo.iso import country_name, subdivision_name

    country, subdivision = location.country, location.subdivision
    return {
        "address": address,
        "country": country,
        "country_name": country_name(country) if country else None,
        "subdivision": subdivision,
        "subdivision_name": subdivision_name(subdivision) if subdivision else None,
        "in_eu": location.in_eu,
        "source": location.source.value,
        "database": location.database,
    }


def _text(fields: dict[str, object]) -> str:
    def named(code: object, name: object, missing: str = "unknown") -> str:
        if code is None:
            return missing
        return f"{code} ({name})" if name else str(code)

    in_eu = fields["in_eu"]
    rows = [
        ("address", fields["address"]),
        ("country", named(fields["country"], fields["country_name"])),
        ("subdivision", named(fields["subdivision"], fields["subdivision_name"], "none")),
        ("in EU", "unknown" if in_eu is None else ("yes" if in_eu else "no")),
        ("source", fields["source"]),
        ("database", fields["database"] or "none"),
    ]
    return "\n".join(f"{label:<12} {value}" for label, value in rows)
