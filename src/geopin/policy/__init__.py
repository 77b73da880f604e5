"""The pure policy core: model, loader, compiler and decision engine.

Nothing here performs network or database I/O or imports a web framework.
"""
