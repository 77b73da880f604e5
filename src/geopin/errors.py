"""geopin's own exceptions. Foreign exceptions are translated into these at the adapters."""

from __future__ import annotations


class GeopinError(Exception):
    """Base of every error geopin raises on purpose."""


class PolicyError(GeopinError):
    """A policy could not be loaded; ``problems`` lists every reason with its location."""

    def __init__(self, problems: list) -> None:  # list[Problem], kept loose to avoid a cycle
        self.problems = problems
        first = problems[0] if problems else None
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}" if first else "invalid policy")


class GeoIPError(GeopinError):
    """A GeoIP database is missing, unreadable or malformed."""


class ConfigError(GeopinError):
    """Settings are invalid."""


class AuditError(GeopinError):
    """The audit store failed or is unavailable."""


class AuditUnavailable(AuditError):
    """The audit database cannot take records right now; the router fails closed."""


class SchemaOutOfDate(AuditError):
    """The audit database schema is older than this geopin; ``geopin db upgrade`` fixes it."""


class VerificationError(AuditError):
    """The audit log failed verification."""


class UpstreamError(GeopinError):
    """An upstream endpoint could not be reached or failed before any byte was sent."""
