"""The policy files' schema: what an author may write, as frozen pydantic models.

This is the shape of one YAML file; ``loader`` merges the files of a directory and
``check`` validates what needs the whole policy (names, ISO codes, cycles).
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from geopin.policy.decision import ProviderKind, Tier

Identifier = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Metadata(_Strict):
    """Free text about the policy, shown by ``geopin policy explain``."""

    name: Text | None = None
    description: Text | None = None
    disclaimer: Text | None = None


class JurisdictionSpec(_Strict):
    """A named set of places, possibly built from other jurisdictions."""

    name: Text | None = Field(None, description="A human name, e.g. 'European Economic Area'.")
    description: Text | None = None
    countries: list[str] = Field(default_factory=list, description="ISO 3166-1 alpha-2 codes.")
    subdivisions: list[str] = Field(
        default_factory=list, description="ISO 3166-2 codes such as CA-QC."
    )
    include: list[str] = Field(
        default_factory=list, description="Other jurisdictions whose places this one adds."
    )


class CredentialsSpec(_Strict):
    """Where the endpoint's secret is: an environment variable or a file. Never the secret."""

    env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    file: Text | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self


class EndpointSpec(_Strict):
    """One upstream: where it is, what it serves, how to reach it."""

    id: Identifier
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#]+[^\s?#]*$")] = Field(
        description="Base URL; for OpenAI-compatible and Anthropic kinds it includes /v1."
    )
    kind: ProviderKind
    country: str = Field(description="ISO 3166-1 alpha-2 code of where inference runs.")
    subdivision: str | None = Field(None, description="ISO 3166-2 code, e.g. CA-QC.")
    may_process_in: list[str] = Field(
        default_factory=list,
        description="Other countries or subdivisions this endpoint may process in (a data "
        "zone); it is compliant only where all of them are permitted.",
    )
    region: Text | None = Field(None, description="The provider's name for the region.")
    tier: Tier = Tier.REGIONAL
    priority: int = Field(100, ge=0, le=10_000, description="Lower is preferred.")
    weight: int = Field(1, ge=1, le=1000)
    models: dict[str, str | None] = Field(
        min_length=1,
        description="Model name clients use -> name at this endpoint (null: the same name).",
    )
    credentials: CredentialsSpec | None = None
    api_version: Text | None = Field(None, description="Azure OpenAI api-version.")
    description: Text | None = None


class ModelSpec(_Strict):
    """Preferences for one model, e.g. small models go to the edge."""

    prefer_tier: Tier | None = None
    description: Text | None = None


class RuleSpec(_Strict):
    """Match some requests, then constrain where they may be processed, or deny them."""

    id: Identifier
    description: Text | None = None
    from_: list[str] | None = Field(
        None,
        alias="from",
        description="Client locations: jurisdictions, countries, subdivisions or 'unknown'.",
    )
    tenants: list[str] | None = None
    models: list[str] | None = Field(None, description="Model names; '*' and '?' globs allowed.")
    data_classes: list[str] | None = None
    process_in: list[str] | None = Field(
        None, description="Where matching requests may be processed."
    )
    deny: bool = False
    reason: Text | None = None
    legal_basis: Text | None = None

    @model_validator(mode="after")
    def _one_effect(self) -> Self:
        if self.deny and self.process_in is not None:
            raise ValueError("a rule either denies or gives 'process_in', not both")
        if not self.deny and self.process_in is None:
            raise ValueError("a rule needs 'process_in' or 'deny: true'")
        if self.deny and not self.reason:
            raise ValueError("a deny rule needs a 'reason' (a 451 response carries it)")
        return self


class TenantSpec(_Strict):
    """A tenant's own rules: they apply on top of the policy's and can only narrow it."""

    description: Text | None = None
    rules: list[RuleSpec] = Field(default_factory=list)


class OutcomeSpec(_Strict):
    """What a default does: constrain, or deny."""

    process_in: list[str] | None = None
    deny: bool = False
    reason: Text | None = None
    legal_basis: Text | None = None

    @model_validator(mode="after")
    def _one_effect(self) -> Self:
        if self.deny == (self.process_in is not None):
            raise ValueError("give either 'process_in' or 'deny: true'")
        if self.deny and not self.reason:
            raise ValueError("a deny needs a 'reason' (a 451 response carries it)")
        return self


class DefaultsSpec(_Strict):
    unknown_location: OutcomeSpec | None = Field(
        None, description="Applies whenever the client's location is unknown."
    )
    no_match: OutcomeSpec | None = Field(
        None, description="Applies when no rule matches. Without it such requests are denied."
    )
    data_class: str | None = Field(
        None, description="The class assumed for every request; a declared one only adds to it."
    )
    prefer_tier: Tier = Tier.REGIONAL


class PolicyFile(_Strict):
    """One YAML file of a policy directory. Every section is optional; files are merged."""

    metadata: Metadata | None = None
    jurisdictions: dict[str, JurisdictionSpec] = Field(default_factory=dict)
    endpoints: list[EndpointSpec] = Field(default_factory=list)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    data_classes: list[Identifier] = Field(
        default_factory=list, description="The data classes requests may declare."
    )
    rules: list[RuleSpec] = Field(default_factory=list)
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)
    defaults: DefaultsSpec | None = None
