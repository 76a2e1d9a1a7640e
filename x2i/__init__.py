"""x2i: build, curate and train on X2I ("anything to image") data."""

# The one place the version is written: pyproject.toml reads it from here (setuptools' `attr`, without importing
# x2i), so the installed metadata and this string cannot differ. A literal, not importlib.metadata.version():
# that import and look-up cost every command ~20 ms before any work (the manifest and user agent need it).
__version__ = "0.1.0"
