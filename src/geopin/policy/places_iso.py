"""ISO 3166 codes: what is a country, a subdivision, and how a policy names places."""

from __future__ import annotations

import re
from collections.abc import Container
from enum import StrEnum
from functools import lru_cache

import pycountry

UNKNOWN_TOKEN = "unknown"
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_SUBDIVISION = re.compile(r"^([A-Z]{2})-([A-Z0-9]{1,3})$")
# Codes people write that ISO spells otherwise (Eurostat uses EL and UK).
NON_ISO_SPELLINGS = {"EL": "GR", "UK": "GB"}


class NameKind(StrEnum):
    UNKNOWN = "unknown"
    JURISDICTION = "jurisdiction"
    COUNTRY = "country"
    SUBDIVISION = "subdivision"
    INVALID = "invalid"


@lru_cache(maxsize=4096)
def is_country(code: str) -> bool:
    return bool(_COUNTRY.match(code)) and pycountry.countries.get(alpha_2=code) is not None


@lru_cache(maxsize=4096)
def is_subdivision(code: str) -> bool:
    return bool(_SUBDIVISION.match(code)) and pycountry.subdivisions.get(code=code) is not None


@lru_cache(maxsize=4096)
def country_name(code: str) -> str:
    country = pycountry.countries.get(alpha_2=code)
    return country.name if country else code


@lru_cache(maxsize=4096)
def subdivision_name(code: str) -> str:
    sub = pycountry.subdivisions.get(code=code)
    return sub.name if sub else code


def all_countries() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


def looks_like_code(name: str) -> bool:
    return bool(_COUNTRY.match(name) or _SUBDIVISION.match(name))


def classify(name: str, jurisdictions: Container[str]) -> NameKind:
    """How a policy token is read: a jurisdiction name first, then an ISO code."""
    if name == UNKNOWN_TOKEN:
        return NameKind.UNKNOWN
    if name in jurisdictions:
        return NameKind.JURISDICTION
    if is_country(name):
        return NameKind.COUNTRY
    if is_subdivision(name):
        return NameKind.SUBDIVISION
    return NameKind.INVALID


def invalid_code_hint(name: str) -> str | None:
    if name.upper() in NON_ISO_SPELLINGS:
        return f"ISO 3166-1 spells it '{NON_ISO_SPELLINGS[name.upper()]}'"
    if name.upper() != name and (is_country(name.upper()) or is_subdivision(name.upper())):
        return f"ISO codes are upper case: '{name.upper()}'"
    if is_subdivision(name):  # a valid code in the wrong place, e.g. under 'countries'
        return f"'{name}' is an ISO 3166-2 subdivision, not a country"
    match = _SUBDIVISION.match(name)
    if match and is_country(match.group(1)):
        return f"'{match.group(1)}' has no subdivision '{match.group(2)}' in ISO 3166-2"
    return None
