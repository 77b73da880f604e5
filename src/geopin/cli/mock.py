"""``geopin mock-upstream``: the mock model API, defined in ``geopin.mock.command``."""

from geopin.mock.command import mock_upstream

__all__ = ["mock_upstream"]
