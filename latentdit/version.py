"""The library version, from the installed package's metadata (pyproject.toml's ``version``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentdit")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
