"""x2i: build, curate and train on X2I ("anything to image") data."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("x2i")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
