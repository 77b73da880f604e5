"""Sets of places where processing may happen: whole countries and single subdivisions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlaceSet:
    """Countries (ISO 3166-1 alpha-2) and subdivisions (ISO 3166-2, ``CA-QC``).

    A subdivision is inside the set when its country is, or when it is listed itself.
    ``anywhere`` is the unconstrained set, the identity of :meth:`intersect`.
    """

    countries: frozenset[str] = frozenset()
    subdivisions: frozenset[str] = frozenset()
    anywhere: bool = False

    def contains(self, country: str | None, subdivision: str | None = None) -> bool:
        if self.anywhere:
            return True
        if country in self.countries:
            return True
        return subdivision is not None and subdivision in self.subdivisions

    def intersect(self, other: PlaceSet) -> PlaceSet:
        if self.anywhere:
            return other
        if other.anywhere:
            return self
        countries = self.countries & other.countries
        subdivisions = (
            (self.subdivisions & other.subdivisions)
            | {s for s in self.subdivisions if _country_of(s) in other.countries}
            | {s for s in other.subdivisions if _country_of(s) in self.countries}
        )
        return PlaceSet(frozenset(countries), frozenset(subdivisions))

    def union(self, other: PlaceSet) -> PlaceSet:
        if self.anywhere or other.anywhere:
            return ANYWHERE
        return PlaceSet(self.countries | other.countries, self.subdivisions | other.subdivisions)

    @property
    def empty(self) -> bool:
        return not self.anywhere and not self.countries and not self.subdivisions

    def codes(self) -> tuple[str, ...]:
        """Sorted codes, ``("*",)`` for anywhere: the stable form for records and output."""
        if self.anywhere:
            return ("*",)
        subdivisions = (s for s in self.subdivisions if _country_of(s) not in self.countries)
        return tuple(sorted(self.countries)) + tuple(sorted(subdivisions))


def _country_of(subdivision: str) -> str:
    return subdivision.split("-", 1)[0]


ANYWHERE = PlaceSet(anywhere=True)
NOWHERE = PlaceSet()
