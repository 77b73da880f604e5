"""Compiling a validated policy source into an immutable, versioned structure for the engine."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from geopin.policy.decision import CredentialRef, Endpoint, Tier
from geopin.policy.loader import Located, PolicySource
from geopin.policy.model import Metadata, OutcomeSpec, RuleSpec
from geopin.policy.places import ANYWHERE, PlaceSet
from geopin.policy.places_iso import UNKNOWN_TOKEN, NameKind, classify
from geopin.policy.problems import Position, Problem

UNKNOWN_LOCATION_RULE = "defaults.unknown_location"
NO_MATCH_RULE = "defaults.no_match"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with every name resolved: what it matches and what it does."""

    id: str
    position: Position
    effect: str  # "process_in" | "deny"
    places: PlaceSet  # where matching requests may be processed (NOWHERE for a deny)
    place_names: tuple[str, ...] = ()
    reason: str | None = None
    legal_basis: str | None = None
    owner: str | None = None  # the tenant whose rule this is
    from_places: PlaceSet | None = None  # None: any location
    from_unknown: bool = False
    tenants: frozenset[str] | None = None
    models: frozenset[str] | None = None
    data_classes: frozenset[str] | None = None
    description: str | None = None

    @property
    def deny(self) -> bool:
        return self.effect == "deny"


@dataclass(frozen=True)
class CompiledPolicy:
    """An immutable policy. ``version`` is a hash of the files' contents."""

    version: str
    root: str
    files: tuple[str, ...]
    metadata: Metadata | None
    jurisdictions: Mapping[str, PlaceSet]
    endpoints: Mapping[str, Endpoint]
    serving: Mapping[str, tuple[Endpoint, ...]]  # model -> endpoints serving it, catalogue order
    prefer_tier: Mapping[str, Tier]
    default_tier: Tier
    rules: tuple[CompiledRule, ...]
    unknown_location_rule: CompiledRule | None
    no_match_rule: CompiledRule | None
    tenants: frozenset[str]
    data_classes: frozenset[str]
    default_data_class: str | None
    warnings: tuple[Problem, ...] = ()
    # Memo of decide(): the decision is a pure function of the policy and the context.
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self.serving)

    def rule(self, rule_id: str) -> CompiledRule | None:
        for rule in self.all_rules():
            if rule.id == rule_id:
                return rule
        return None

    def all_rules(self) -> tuple[CompiledRule, ...]:
        extra = (self.unknown_location_rule, self.no_match_rule)
        return self.rules + tuple(r for r in extra if r is not None)

    def with_warnings(self, warnings: tuple[Problem, ...]) -> CompiledPolicy:
        return replace(self, warnings=warnings, cache={})


def compile_source(source: PolicySource) -> CompiledPolicy:
    """Build the compiled policy from a source that ``check_source`` found free of errors."""
    jurisdictions = _expand_jurisdictions(source)
    endpoints = {e.spec.id: _endpoint(e) for e in source.endpoints}
    serving: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints.values():
        for model in endpoint.models:
            serving.setdefault(model, []).append(endpoint)
    models = frozenset(serving)
    rules = [_rule(r, None, jurisdictions, models) for r in source.rules]
    rules += [_rule(r, t, jurisdictions, models) for t, r in source.tenant_rules()]
    defaults = source.defaults.spec if source.defaults else None
    default_tier = defaults.prefer_tier if defaults else Tier.REGIONAL
    return CompiledPolicy(
        version=source.digest[:16],
        root=source.root,
        files=tuple(source.files),
        metadata=source.metadata,
        jurisdictions=MappingProxyType(jurisdictions),
        endpoints=MappingProxyType(endpoints),
        serving=MappingProxyType({m: tuple(e) for m, e in serving.items()}),
        prefer_tier=MappingProxyType(
            {m: s.spec.prefer_tier for m, s in source.models.items() if s.spec.prefer_tier}
        ),
        default_tier=default_tier,
        rules=tuple(sorted(rules, key=lambda r: r.id)),
        unknown_location_rule=_default_rule(
            source, "unknown_location", UNKNOWN_LOCATION_RULE, jurisdictions
        ),
        no_match_rule=_default_rule(source, "no_match", NO_MATCH_RULE, jurisdictions),
        tenants=frozenset(source.tenants),
        data_classes=frozenset(source.data_classes),
        default_data_class=defaults.data_class if defaults else None,
    )


def places_of(
    names: list[str] | tuple[str, ...], jurisdictions: Mapping[str, PlaceSet]
) -> PlaceSet:
    """The union of the places a list of names means (jurisdictions, countries, subdivisions)."""
    countries: set[str] = set()
    subdivisions: set[str] = set()
    for name in names:
        kind = classify(name, jurisdictions)
        if kind is NameKind.JURISDICTION:
            countries |= jurisdictions[name].countries
            subdivisions |= jurisdictions[name].subdivisions
        elif kind is NameKind.COUNTRY:
            countries.add(name)
        elif kind is NameKind.SUBDIVISION:
            subdivisions.add(name)
    return PlaceSet(frozenset(countries), frozenset(subdivisions))


def _expand_jurisdictions(source: PolicySource) -> dict[str, PlaceSet]:
    expanded: dict[str, PlaceSet] = {}

    def expand(name: str) -> PlaceSet:
        if name not in expanded:
            spec = source.jurisdictions[name].spec
            places = PlaceSet(frozenset(spec.countries), frozenset(spec.subdivisions))
            for other in spec.include:
                places = places.union(expand(other))
            expanded[name] = places
        return expanded[name]

    for name in source.jurisdictions:
        expand(name)
    return expanded


def _endpoint(located: Located) -> Endpoint:
    spec = located.spec
    credentials = None
    if spec.credentials is not None:
        credentials = CredentialRef(env=spec.credentials.env, file=spec.credentials.file)
    return Endpoint(
        id=spec.id,
        url=spec.url.rstrip("/"),
        kind=spec.kind,
        country=spec.country,
        subdivision=spec.subdivision,
        region=spec.region,
        tier=spec.tier,
        models=MappingProxyType({m: (u or m) for m, u in spec.models.items()}),
        priority=spec.priority,
        weight=spec.weight,
        credentials=credentials,
        api_version=spec.api_version,
        may_process_in=tuple(spec.may_process_in),
    )


def _rule(
    located: Located[RuleSpec],
    owner: str | None,
    jurisdictions: Mapping[str, PlaceSet],
    models: frozenset[str],
) -> CompiledRule:
    spec = located.spec
    from_places = None
    if spec.from_ is not None:
        from_places = places_of(spec.from_, jurisdictions)
    matched_models = None
    if spec.models is not None:
        matched_models = frozenset(
            m for m in models if any(fnmatch.fnmatchcase(m, p) for p in spec.models)
        )
    return CompiledRule(
        id=spec.id,
        position=located.at("id"),
        effect="deny" if spec.deny else "process_in",
        places=PlaceSet() if spec.deny else places_of(spec.process_in or [], jurisdictions),
        place_names=tuple(spec.process_in or ()),
        reason=spec.reason,
        legal_basis=spec.legal_basis,
        owner=owner,
        from_places=from_places,
        from_unknown=UNKNOWN_TOKEN in (spec.from_ or ()),
        tenants=frozenset(spec.tenants) if spec.tenants is not None else None,
        models=matched_models,
        data_classes=frozenset(spec.data_classes) if spec.data_classes is not None else None,
        description=spec.description,
    )


def _default_rule(
    source: PolicySource, key: str, rule_id: str, jurisdictions: Mapping[str, PlaceSet]
) -> CompiledRule | None:
    if source.defaults is None:
        return None
    outcome: OutcomeSpec | None = getattr(source.defaults.spec, key)
    if outcome is None:
        return None
    return CompiledRule(
        id=rule_id,
        position=source.defaults.at(key),
        effect="deny" if outcome.deny else "process_in",
        places=PlaceSet() if outcome.deny else places_of(outcome.process_in or [], jurisdictions),
        place_names=tuple(outcome.process_in or ()),
        reason=outcome.reason,
        legal_basis=outcome.legal_basis,
    )


__all__ = ["ANYWHERE", "CompiledPolicy", "CompiledRule", "compile_source", "places_of"]
