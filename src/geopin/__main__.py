"""``python -m geopin``: the same as the ``geopin`` command."""

from geopin.cli import main

main(prog_name="geopin")
