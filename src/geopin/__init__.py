"""geopin: a data-residency compliance router for model APIs."""

__version__ = "0.1.0"
