"""The decision's inputs and outputs: plain frozen values the proxy and the audit log carry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from geopin.geo.location import Location
from geopin.policy.places import ANYWHERE, PlaceSet


class Action(StrEnum):
    ROUTE = "route"
    DENY = "deny"


class DenyCode(StrEnum):
    """Why a request was refused; the proxy maps each to its HTTP status."""

    RULE = "rule_deny"  # a deny rule matched (451)
    NO_PERMITTED_PLACE = (
        "no_permitted_place"  # the matching constraints have no place in common (451)
    )
    NO_COMPLIANT_ENDPOINT = (
        "no_compliant_endpoint"  # no endpoint serving the model is permitted (451)
    )
    UNKNOWN_MODEL = "unknown_model"  # no endpoint in the catalogue serves the model (404)


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"


class ProviderKind(StrEnum):
    OPENAI = "openai-compatible"
    AZURE_OPENAI = "azure-openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True, slots=True)
class CredentialRef:
    """Where an endpoint's secret lives: an environment variable or a file. Never the secret."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream in the catalogue, where inference physically runs in ``country``."""

    id: str
    url: str
    kind: ProviderKind
    country: str
    tier: Tier
    models: Mapping[str, str]  # the client's model name -> the name this endpoint knows it by
    subdivision: str | None = None
    region: str | None = None  # the provider's own name for the region, for people
    priority: int = 100  # lower is preferred
    weight: int = 1
    credentials: CredentialRef | None = None
    api_version: str | None = None  # Azure OpenAI's api-version query parameter
    # Other places this endpoint may process in (a provider's data zone). The endpoint is
    # compliant only where its country and every one of these are permitted.
    may_process_in: tuple[str, ...] = ()

    def processes_within(self, permitted: PlaceSet) -> bool:
        if not permitted.contains(self.country, self.subdivision):
            return False
        for code in self.may_process_in:
            if not permitted.contains(code[:2], code if len(code) > 2 else None):
                return False
        return True


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The facts a decision is made from. Built by the proxy, the CLI or a policy test case."""

    location: Location
    model: str | None  # None: a call that names no model (the Files API, a stored response)
    tenant: str | None = None
    data_class: str | None = None


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A rule that matched, and what it did: ``process_in`` (with its places) or ``deny``."""

    rule_id: str
    effect: str
    places: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one request. Immutable and shareable between requests."""

    action: Action
    policy_version: str
    permitted: tuple[str, ...]  # PlaceSet.codes() of the permitted set; ("*",) is anywhere
    candidates: tuple[Endpoint, ...]  # compliant endpoints serving the model, in policy order
    # One rank per candidate: candidates of equal rank are equally preferred by the policy (same
    # tier preference, locality and priority), so routing may order them by health and latency.
    candidate_ranks: tuple[int, ...]
    matched: tuple[RuleMatch, ...]  # every rule that shaped the decision, in a stable order
    reason: str
    legal_basis: str | None = None
    deny_code: DenyCode | None = None
    deny_rule: str | None = None
    prefer_tier: Tier = Tier.REGIONAL
    data_class: str | None = None  # the class the decision was made for (after the floor)
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def routed(self) -> bool:
        return self.action is Action.ROUTE

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(m.rule_id for m in self.matched)

    def permitted_places(self) -> PlaceSet:
        """``permitted`` as a place set again."""
        if self.permitted == ("*",):
            return ANYWHERE
        return PlaceSet(
            frozenset(c for c in self.permitted if len(c) == 2),
            frozenset(c for c in self.permitted if len(c) > 2),
        )
