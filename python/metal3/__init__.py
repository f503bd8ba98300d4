"""metal3: a Kubernetes-native bare-metal host manager.

The package holds the BareMetalHost API types (:mod:`metal3.api`), the command line
(:mod:`metal3.cli`) and, as a compiled extension, the image streaming core
(:mod:`metal3._imagestream`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metal3")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
