"""ISO 3166 codes known to pycountry, loaded once on first use."""

from __future__ import annotations

from functools import cache

import pycountry


def is_country(code: str) -> bool:
    """True for an ISO 3166-1 alpha-2 code in upper case (``DE``)."""
    return code in _countries()


def is_subdivision(code: str) -> bool:
    """True for a full ISO 3166-2 code in upper case (``US-CA``)."""
    return code in _subdivisions()


def country_name(code: str) -> str | None:
    return _countries().get(code)


def subdivision_name(code: str) -> str | None:
    return _subdivisions().get(code)


@cache
def _countries() -> dict[str, str]:
    return {country.alpha_2: country.name for country in pycountry.countries}


@cache
def _subdivisions() -> dict[str, str]:
    return {subdivision.code: subdivision.name for subdivision in pycountry.subdivisions}
