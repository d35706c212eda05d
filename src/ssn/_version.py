"""The version of ssn, in one place: the package, its metadata (pyproject.toml) and its run directories read it."""

__version__ = "0.7.0"
