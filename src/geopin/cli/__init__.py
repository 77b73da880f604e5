"""The ``geopin`` command: a composition root that wires the core to the terminal."""

from __future__ import annotations

import click

from geopin import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geopin")
def main() -> None:
    """geopin: a data-residency compliance router for model APIs."""


def _register() -> None:
    from geopin.cli import policy

    main.add_command(policy.policy)
    from geopin.cli.mock import mock_upstream

    main.add_command(mock_upstream)
    from geopin.cli import geo as geo_cli

    main.add_command(geo_cli.geo)
    from geopin.cli.keys import keys

    main.add_command(keys)
    from geopin.cli.demo import demo
    from geopin.cli.serve import serve

    main.add_command(serve)
    main.add_command(demo)
    from geopin.cli.audit import audit
    from geopin.cli.db import db

    main.add_command(audit)
    main.add_command(db)


_register()
