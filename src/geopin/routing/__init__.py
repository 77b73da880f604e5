"""Choosing among compliant endpoints: health and selection."""
