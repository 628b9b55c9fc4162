"""dhruva's front door: every check a change must pass, one ``nox`` away.

``nox`` with no arguments runs the default sessions (unit tests, the conformance
suite against every in-repo back-end, lint, typecheck, docs).  ``nox -l`` lists
them; ``nox -s bench`` runs the benchmarks, which are not part of the default
run because they compare against Durus and ZODB and take a while.

Each session installs dhruva from this checkout into its own virtualenv (a plain,
non-editable install, so the sessions test what a user gets from ``pip install``,
including the ``dhruva_conformance`` plugin and its test vectors).  The install
builds the optional C extension ``dhruva._speedups`` (setup.py); ``tests_bare``
makes that compile fail, as on a machine without a C compiler, so the unit tests
run once on the C path (``tests``) and once on the pure-Python path
(``tests_bare``), and tests/test_speedups.py checks that each got the path it
asked for (docs/guide/speedups.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

#: The newer interpreters ``tests_newer`` runs the unit tests on, beside PYTHON.
NEWER_PYTHONS = ["3.12", "3.13"]


def _runs(executable: str) -> bool:
    """Whether ``executable`` is a Python that starts (a pyenv shim of a version
    that is installed but not selected is on PATH and exits 127)."""
    try:
        completed = subprocess.run([executable, "-c", "pass"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return completed.returncode == 0


def _find_newer_pythons() -> list[str]:
    """The versions of NEWER_PYTHONS this machine can run, each made findable as ``pythonX.Y``.

    One on PATH that starts is used as it is; otherwise the newest
    ``versions/X.Y.*`` under pyenv's root (``$PYENV_ROOT``, else ``~/.pyenv``)
    goes to the front of PATH, where nox looks for it.
    """
    found: list[str] = []
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    for version in NEWER_PYTHONS:
        name = f"python{version}"
        on_path = shutil.which(name)
        if on_path is not None and _runs(on_path):
            found.append(version)
            continue
        candidates = [
            executable
            for root in roots
            if root
            for executable in Path(root, "versions").glob(f"{version}.*/bin/{name}")
        ]

        def release(executable: Path) -> tuple[int, ...]:
            patch = executable.parent.parent.name.split(".")[2]
            return (int(patch),) if patch.isdigit() else (-1,)

        for executable in sorted(candidates, key=release, reverse=True):
            if _runs(str(executable)):
                os.environ["PATH"] = f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}"
                found.append(version)
                break
    return found


#: The newer versions found; tests_newer is a default session when there is one.
NEWER_FOUND = _find_newer_pythons()

nox.options.sessions = [
    "tests",
    *(["tests_newer"] if NEWER_FOUND else []),
    "tests_bare",
    "conformance",
    "lint",
    "typecheck",
    "docs",
]
nox.options.reuse_existing_virtualenvs = True
# A session whose interpreter is missing is a failure, not a silent skip.
nox.options.error_on_missing_interpreters = True


#: The environment variable tests/test_speedups.py reads: "1" when the session
#: installed dhruva with its C extension, "0" when without.
EXPECT_SPEEDUPS = "DHRUVA_EXPECT_SPEEDUPS"

#: What makes the extension's compile fail, as on a machine with no C compiler:
#: setuptools runs ``$CC`` to compile (on POSIX, the only platform dhruva's file
#: layer supports), ``/bin/false`` exits 1, and the extension, being optional,
#: is left out with a warning.
NO_COMPILER = {"CC": "/bin/false"}

#: An empty DHRUVA_PURE_PYTHON, so that one exported in the caller's shell does
#: not turn the C path off in the sessions that test it (dhruva/speedups.py).
C_PATH = {"DHRUVA_PURE_PYTHON": ""}


def install_dhruva(session: nox.Session, *extras: str, compile_speedups: bool = True) -> None:
    """Install dhruva from this checkout, with ``extras``, into the session's venv.

    setuptools builds in ``build/`` inside the checkout and never empties it, so
    a module deleted from the source would still be installed from there, and a
    C extension built by an earlier session would be installed as "up to date"
    even where the compile now fails; the directory is removed first.  With
    ``compile_speedups=False`` the compile of the C extension is made to fail
    and dhruva is installed without it.
    """
    shutil.rmtree(Path(__file__).parent / "build", ignore_errors=True)
    session.install(
        f".[{','.join(extras)}]" if extras else ".",
        env={} if compile_speedups else NO_COMPILER,
    )


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the unit tests in tests/ with the C extension (includes the requirement check)."""
    # The optional serializers' extras too, so their tests run instead of skipping;
    # postgres so that tests/test_postgres_storage.py runs on a throwaway cluster.
    install_dhruva(session, "test", "msgspec", "dill", "postgres")
    session.run("pytest", "tests/", *session.posargs, env={**C_PATH, EXPECT_SPEEDUPS: "1"})


@nox.session(python=NEWER_FOUND or NEWER_PYTHONS)
def tests_newer(session: nox.Session) -> None:
    """Run the unit tests with the C extension on each newer Python dhruva supports.

    Python 3.13 changed what the C pickler accepts (a ``persistent_id`` set on
    an instance of ``pickle.Pickler`` itself is refused), and the extension is
    compiled against each version's C API: both are only seen by running there.
    A default session on every machine that has one of them (found on PATH or
    under pyenv's root); asked for by name where none is, it fails.
    """
    install_dhruva(session, "test")
    session.run("pytest", "tests/", *session.posargs, env={**C_PATH, EXPECT_SPEEDUPS: "1"})


@nox.session(python=PYTHON)
def tests_bare(session: nox.Session) -> None:
    """Run the unit tests and the file back-end's conformance suite bare: no extra, no C.

    The core needs the standard library alone; what needs msgspec, dill, the
    MCP SDK, cryptography or psycopg must skip with a reason, never fail.  And
    dhruva must work without a C compiler: the install here is made to fail
    the compile of the C extension, so both runs take the pure-Python path.
    """
    install_dhruva(session, compile_speedups=False)
    session.install("pytest>=8", "hypothesis>=6.100")
    # C_PATH here too: the extension must be off because it is absent, not disabled.
    without = {**C_PATH, EXPECT_SPEEDUPS: "0"}
    session.run("pytest", "tests/", *session.posargs, env=without)
    session.run("pytest", "conformance/", "--dhruva-backend=file", *session.posargs, env=without)


@nox.session(python=PYTHON)
@nox.parametrize("backend", CONFORMANCE_BACKENDS)
def conformance(session: nox.Session, backend: str) -> None:
    """Run the conformance suite in conformance/ against one back-end."""
    # The postgres back-ends start a throwaway PostgreSQL cluster; they need psycopg.
    install_dhruva(session, "test", *(["postgres"] if "postgres" in backend else []))
    session.run(
        "pytest", "conformance/", f"--dhruva-backend={backend}", *session.posargs, env=C_PATH
    )


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
