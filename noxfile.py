"""dhruva's front door: every check a change must pass, one ``nox`` away.

``nox`` with no arguments runs the default sessions (unit tests, the conformance
suite against every in-repo back-end, lint, typecheck, docs).  ``nox -l`` lists
them; ``nox -s bench`` runs the benchmarks, which are not part of the default
run because they compare against Durus and ZODB and take a while.

Each session installs dhruva from this checkout into its own virtualenv (a plain,
non-editable install, so the sessions test what a user gets from ``pip install``,
including the ``dhruva_conformance`` plugin and its test vectors).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

# The interpreter every session runs on.  ``nox --force-python 3.12`` (or 3.13)
# runs the same sessions on a newer Python.
PYTHON = "3.11"

# The back-ends the conformance suite runs against, by the names the
# conformance plugin's ``--dhruva-backend`` option accepts: each in-repo storage
# directly, and through the storage server, which is held to the same contract.
CONFORMANCE_BACKENDS = [
    "memory",
    "file",
    "file2",
    "sqlite",
    "postgres",
    "server-memory",
    "server-file",
    "server-sqlite",
    "server-postgres",
]

nox.options.sessions = ["tests", "tests_bare", "conformance", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
# A session whose interpreter is missing is a failure, not a silent skip.
nox.options.error_on_missing_interpreters = True


def install_dhruva(session: nox.Session, *extras: str) -> None:
    """Install dhruva from this checkout, with ``extras``, into the session's venv.

    setuptools builds in ``build/`` inside the checkout and never empties it, so
    a module deleted from the source would still be installed from there; the
    directory is removed first.
    """
    shutil.rmtree(Path(__file__).parent / "build", ignore_errors=True)
    session.install(f".[{','.join(extras)}]" if extras else ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the unit tests in tests/ (includes the requirement-coverage check)."""
    # The optional serializers' extras too, so their tests run instead of skipping;
    # postgres so that tests/test_postgres_storage.py runs on a throwaway cluster.
    install_dhruva(session, "test", "msgspec", "dill", "postgres")
    session.run("pytest", "tests/", *session.posargs)


@nox.session(python=PYTHON)
def tests_bare(session: nox.Session) -> None:
    """Run the unit tests and the file back-end's conformance suite with no extra installed.

    The core needs the standard library alone; what needs msgspec, dill, the
    MCP SDK, cryptography or psycopg must skip with a reason, never fail.
    """
    install_dhruva(session)
    session.install("pytest>=8", "hypothesis>=6.100")
    session.run("pytest", "tests/", *session.posargs)
    session.run("pytest", "conformance/", "--dhruva-backend=file", *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("backend", CONFORMANCE_BACKENDS)
def conformance(session: nox.Session, backend: str) -> None:
    """Run the conformance suite in conformance/ against one back-end."""
    # The postgres back-ends start a throwaway PostgreSQL cluster; they need psycopg.
    install_dhruva(session, "test", *(["postgres"] if "postgres" in backend else []))
    session.run("pytest", "conformance/", f"--dhruva-backend={backend}", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check the whole tree with ruff (rules in pyproject.toml)."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check dhruva/ with mypy in strict mode (config in pyproject.toml)."""
    # The optional serializers import msgspec and dill; mypy needs them installed.
    install_dhruva(session, "test", "msgspec", "dill", "postgres")
    session.install("mypy")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx site (guide, spec, API) with warnings as errors."""
    # The API reference imports every module, the optional serializers too.
    install_dhruva(session, "docs", "msgspec", "dill")
    # Build from scratch, as CI does: a stale page generated for a module that
    # no longer exists would fail the build, and a cached one would hide warnings.
    for generated in ("docs/_build", "docs/_autosummary"):
        shutil.rmtree(Path(__file__).parent / generated, ignore_errors=True)
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks in tools/bench/ against Durus 4.3, ZODB, ZEO, RelStorage (not default)."""
    install_dhruva(session, "msgspec", "dill", "postgres", "transaction")
    # RelStorage on the same throwaway PostgreSQL: tools/bench/postgres_bench.py.
    session.install("relstorage==4.3.0", "psycopg2-binary")
    # ZEO is ZODB's storage server: the server section compares it with
    # dhruva's server and Durus's on loopback.
    session.install("durus==4.3", "ZODB", "ZEO")
    session.run("python", "tools/bench/run.py", *session.posargs)
    session.run("python", "tools/bench/postgres_bench.py")
    # Issue 11: conflicts of a mixed workload, Durus's model vs snapshots.
    session.run("python", "tools/bench/mvcc_bench.py")
    # Issue 15: a transaction-package commit vs connection.commit(), and a 1 GiB blob.
    session.run("python", "tools/bench/transaction_bench.py")
    session.run("python", "tools/bench/blob_bench.py")
