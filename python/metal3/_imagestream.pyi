"""Typed interface of the Rust extension built from ``rust/imagestream``."""

__version__: str
