"""metal3: a Kubernetes-native bare-metal host manager.

The package holds the BareMetalHost API types (:mod:`metal3.api`), the command line
(:mod:`metal3.cli`) and, as one compiled extension (:mod:`metal3._native`), the Rust cores of
the image writer and the inventory converter.

``__version__`` is looked up on first use: reading the installed metadata costs tens of
milliseconds, and every `metal3` process (the agent's among them) imports this package.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("metal3")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
