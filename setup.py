"""Build the optional C extension ``dhruva._speedups``; pyproject.toml holds the rest.

Everything about the package (name, version, dependencies, packages, package
data) is in pyproject.toml.  This file exists only because a C extension
cannot be declared there.  The extension is ``optional``: where it does not
compile (no C compiler, no Python headers), setuptools prints a warning and
installs dhruva without it, and :mod:`dhruva.speedups` then hands every call
to the pure-Python code (docs/guide/speedups.md).
"""

from __future__ import annotations

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dhruva._speedups",
            sources=["dhruva/_speedups.c"],
            optional=True,
        )
    ]
)
