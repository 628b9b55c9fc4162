"""Layered configuration and logging for the ``dhruva`` command (spec: server.md, "Configuration").

Theory of operation.  Every setting has one name (a field of
:class:`Settings`), used unchanged as the TOML key, upper-cased after
``DHRUVA_`` as the environment variable, and with dashes as the flag (a few
flags keep their Durus spelling: ``--logfile``, ``--loglevel``).  Layers are
applied in increasing precedence [CFG-001]: the built-in default, the TOML
file (``--config PATH`` or ``DHRUVA_CONFIG``), ``DHRUVA_*`` environment
variables, then command-line flags.  :func:`load_settings` records where each
value came from, which ``dhruva config`` prints [CFG-010]; a secret is shown
as ``<set>`` and never printed [CFG-011].  Only the standard library is used
(:mod:`tomllib`).

Logging goes through :mod:`logging`: :func:`configure_logging` installs a
plain or a JSON-lines formatter on the ``dhruva`` logger [CFG-020].
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import ssl
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dhruva import wire
from dhruva.error import DhruvaError
from dhruva.server import security
from dhruva.server.address import DEFAULT_HOST, DEFAULT_PORT, Address
from dhruva.server.session import ServerLimits

ENV_PREFIX = "DHRUVA_"
CONFIG_ENV = "DHRUVA_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("plain", "json")


class ConfigError(DhruvaError):
    """A configuration file, variable or flag is unusable; the message names which."""


def _key(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    secret: bool = False,
    file: bool = True,
    choices: tuple[str, ...] | None = None,
) -> Any:
    return field(
        default=default,
        metadata={"help": help, "flag": flag, "secret": secret, "file": file, "choices": choices},
    )


@dataclass(frozen=True)
class Settings:
    """The effective settings of a ``dhruva`` command (keys: spec server.md, CFG-030).

    ``sources`` maps each key to where its value came from: ``default``,
    ``file PATH``, ``env DHRUVA_NAME`` or ``flag --name``.
    """

    file: str | None = _key(None, "the database file to serve or open")
    host: str = _key(DEFAULT_HOST, "TCP host of the server")
    port: int = _key(DEFAULT_PORT, "TCP port of the server (0: a free port, for the server)")
    address: str | None = _key(None, "path of a Unix socket, instead of host and port")
    readonly: bool = _key(False, "refuse every write (server), open read-only (console)")
    gcinterval: float | None = _key(None, "pack the database every this many seconds")
    log_file: str | None = _key(
        None, "write the log to this file (default stderr)", flag="--logfile"
    )
    log_level: str = _key(
        "INFO", "least severe messages logged", flag="--loglevel", choices=LOG_LEVELS
    )
    log_format: str = _key("plain", "log line format: plain or json", choices=LOG_FORMATS)
    secret_file: str | None = _key(None, "file holding the shared secret for authentication")
    secret: str | None = _key(
        None, "the shared secret itself (environment only)", secret=True, file=False
    )
    tls: bool = _key(False, "clients: connect with TLS")
    tls_cert: str | None = _key(None, "server: TLS certificate (PEM); turns TLS on")
    tls_key: str | None = _key(None, "server: private key of tls_cert (PEM)")
    tls_ca: str | None = _key(
        None, "CA bundle (PEM) that verifies the peer: client certificates, or the server"
    )
    tls_require_client_cert: bool = _key(False, "server: refuse clients without a certificate")
    tls_client_cert: str | None = _key(None, "clients: certificate (PEM) to present")
    tls_client_key: str | None = _key(None, "clients: private key of tls_client_cert")
    tls_server_name: str | None = _key(None, "clients: name the server certificate must carry")
    handshake_timeout_s: float = _key(10.0, "seconds a client has to finish TLS, HELLO and AUTH")
    idle_timeout_s: float | None = _key(None, "disconnect clients silent this long (seconds)")
    max_frame_bytes: int = _key(wire.MAX_FRAME_SIZE, "largest frame payload accepted, in bytes")
    max_pending_requests: int = _key(1024, "requests per client read ahead before pausing")
    max_pending_bytes: int = _key(128 << 20, "bytes per client buffered before pausing")
    max_staged_bytes: int = _key(256 << 20, "bytes one transaction may stage before COMMIT")
    max_staged_blob_bytes: int = _key(4 << 30, "blob bytes one transaction may stage")
    max_staged_blobs: int = _key(1024, "blobs one transaction may stage")
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # --- derived values -------------------------------------------------------------

    def server_address(self) -> Address:
        """The Unix socket path if ``address`` is set, else ``(host, port)``."""
        return self.address if self.address else (self.host, self.port)

    def limits(self) -> ServerLimits:
        """The per-connection limits of a server; raises ConfigError when out of range."""
        try:
            return ServerLimits(
                handshake_timeout_s=self.handshake_timeout_s,
                idle_timeout_s=self.idle_timeout_s or None,
                max_frame_bytes=self.max_frame_bytes,
                max_pending_requests=self.max_pending_requests,
                max_pending_bytes=self.max_pending_bytes,
                max_staged_bytes=self.max_staged_bytes,
                max_staged_blob_bytes=self.max_staged_blob_bytes,
                max_staged_blobs=self.max_staged_blobs,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def secret_bytes(self) -> bytes | None:
        """The shared secret: ``secret`` if set, else the contents of ``secret_file``."""
        try:
            if self.secret:
                return security.secret_bytes(self.secret)
            if self.secret_file:
                return security.read_secret_file(self.secret_file)
        except security.SecretError as error:
            raise ConfigError(str(error)) from None
        return None

    def server_tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None when ``tls_cert`` is unset."""
        if not self.tls_cert:
            if self.tls_key or self.tls_require_client_cert:
                raise ConfigError("tls_key and tls_require_client_cert need tls_cert")
            return None
        try:
            return security.server_context(
                self.tls_cert, self.tls_key, self.tls_ca, self.tls_require_client_cert
            )
        except security.SecretError as error:
            raise ConfigError(str(error)) from None

    def client_tls_context(self) -> ssl.SSLContext | None:
        """The context a client (console, ``--stop``) uses, or None for plain TCP.

        TLS is on with ``tls``, or when any TLS file is set, so that the
        server's own settings let ``dhruva -s --stop`` reach it.  The server
        is verified against ``tls_ca``, else against ``tls_cert`` itself
        (pinned: host names are then not checked), else the system's
        authorities.
        """
        if not (self.tls or self.tls_cert or self.tls_ca or self.tls_client_cert):
            return None
        pinned = not self.tls_ca and bool(self.tls_cert)
        check_hostname = bool(self.tls_server_name) or (not pinned and not self.address)
        try:
            return security.client_context(
                ca=self.tls_ca,
                cert=self.tls_client_cert,
                key=self.tls_client_key,
                pinned_cert=self.tls_cert if pinned else None,
                check_hostname=check_hostname,
            )
        except security.SecretError as error:
            raise ConfigError(str(error)) from None


KEYS: tuple[dataclasses.Field[Any], ...] = tuple(
    f for f in dataclasses.fields(Settings) if f.name != "sources"
)
_TYPES: dict[str, str] = {f.name: str(f.type) for f in KEYS}


def flag_of(name: str) -> str:
    """The command-line flag of setting ``name``."""
    meta = Settings.__dataclass_fields__[name].metadata
    return str(meta["flag"] or "--" + name.replace("_", "-"))


def dest_of(name: str) -> str:
    """The argparse destination of setting ``name``'s flag."""
    return flag_of(name)[2:].replace("-", "_")


def _convert(name: str, value: Any, where: str) -> Any:
    """Check and convert ``value`` (TOML value or environment text) for key ``name``."""
    kind = _TYPES[name]
    optional = "None" in kind
    meta = Settings.__dataclass_fields__[name].metadata
    text = isinstance(value, str)
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if text and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text and value.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if optional and text and value.strip() == "":
            return None
        if kind.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError
            return float(value)
        if not text:
            raise ValueError
        choices = meta["choices"]
        if choices is not None:
            upper = value.upper() if name == "log_level" else value.lower()
            if upper not in choices:
                raise ConfigError(f"{where}: {name} must be one of {', '.join(choices)}")
            return upper
        return value
    except ValueError:
        expected = kind.replace(" | None", "").replace("str", "text").replace("bool", "boolean")
        raise ConfigError(f"{where}: {name} must be {expected}, not {value!r}") from None


def read_config_file(path: str) -> dict[str, Any]:
    """Parse the TOML file at ``path``; raise ConfigError naming the file and the problem."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(
            f"cannot read the config file {path}: {error.strerror or error}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        # tomllib decodes the bytes first: a binary file (a database given
        # to --config by mistake) fails here, not in the TOML parser.
        raise ConfigError(
            f"config file {path} is not valid TOML: not UTF-8 text (byte {error.start})"
        ) from None
    # [CFG-002] Settings may sit at the top level or in a [dhruva] table.
    if isinstance(data.get("dhruva"), dict):
        data = {**{k: v for k, v in data.items() if k != "dhruva"}, **data["dhruva"]}
    return data


def load_settings(
    flags: argparse.Namespace | Mapping[str, Any] | None = None,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Return the effective settings: defaults < file < environment < flags [CFG-001].

    ``flags`` holds parsed command-line values by argparse destination; None
    values mean "not given".  ``config_path`` (else the flags' ``config``,
    else ``DHRUVA_CONFIG``) names the TOML file.  Raises ConfigError for an
    unreadable file, an unknown key in the file, or a value of the wrong type.
    """
    env = os.environ if environ is None else environ
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    values: dict[str, Any] = {f.name: f.default for f in KEYS}
    sources = {f.name: "default" for f in KEYS}
    path = config_path or given.get("config") or env.get(CONFIG_ENV) or None
    if path:
        where = f"config file {path}"
        for key, value in read_config_file(path).items():
            field_ = Settings.__dataclass_fields__.get(key)
            # [CFG-003] An unknown key is an error: a typo must not go unnoticed.
            if field_ is None or key == "sources":
                raise ConfigError(f"{where}: unknown setting {key!r}")
            if not field_.metadata["file"]:
                raise ConfigError(
                    f"{where}: {key} may not be written in a file; use secret_file"
                    f" or the {ENV_PREFIX}{key.upper()} environment variable"
                )
            values[key] = _convert(key, value, where)
            sources[key] = f"file {path}"
    for f in KEYS:
        variable = ENV_PREFIX + f.name.upper()
        if variable in env:
            values[f.name] = _convert(f.name, env[variable], f"environment variable {variable}")
            sources[f.name] = f"env {variable}"
    for f in KEYS:
        value = given.get(dest_of(f.name))
        if value is not None:
            values[f.name] = _convert(f.name, value, f"option {flag_of(f.name)}")
            sources[f.name] = f"flag {flag_of(f.name)}"
    settings = Settings(**values, sources=sources)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if not 0 <= settings.port <= 65535:
        raise ConfigError(
            f"port must be 0 to 65535, not {settings.port} ({settings.sources['port']})"
        )
    if settings.gcinterval is not None and settings.gcinterval < 0:
        raise ConfigError("gcinterval must not be negative")


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """Rows ``(key, value, source)`` for ``dhruva config``; secrets read ``<set>`` [CFG-011]."""
    rows: list[tuple[str, str, str]] = []
    for f in KEYS:
        value = getattr(settings, f.name)
        if f.metadata["secret"]:
            text = "<set>" if value else "<unset>"
        elif value is None:
            text = "-"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        rows.append((f.name, text, settings.sources.get(f.name, "default")))
    return rows


def format_description(settings: Settings) -> str:
    """The text ``dhruva config`` prints: one ``key = value  (source)`` line per key."""
    rows = describe(settings)
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    return "\n".join(
        f"{name.ljust(width)} = {value.ljust(value_width)}  ({source})"
        for name, value, source in rows
    )


def add_setting_flags(parser: argparse.ArgumentParser, names: list[str], title: str) -> None:
    """Add the flags of settings ``names`` to ``parser``, all defaulting to None ("not given")."""
    group = parser.add_argument_group(title)
    for name in names:
        f = Settings.__dataclass_fields__[name]
        kind = _TYPES[name]
        help_text = str(f.metadata["help"])
        if f.default is not None and not isinstance(f.default, bool):
            help_text += f" (default {f.default})"
        if kind.startswith("bool"):
            group.add_argument(flag_of(name), dest=dest_of(name), action="store_true",
                               default=None, help=help_text)  # fmt: skip
            continue
        metavar = "SECONDS" if name.endswith("_s") or name == "gcinterval" else None
        if metavar is None:
            metavar = (
                "N"
                if kind.startswith("int")
                else "NAME"
                if name.endswith("_name")
                else "PATH"
                if "file" in name or "tls" in name
                else None
            )
        options: dict[str, Any] = {"choices": f.metadata["choices"]}
        if name == "log_level":
            options["type"] = str.upper
        group.add_argument(
            flag_of(name), dest=dest_of(name), default=None, metavar=metavar, help=help_text,
            **options,
        )  # fmt: skip


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH``."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"read settings from this TOML file (default: ${CONFIG_ENV} if set)",
    )


# --- logging ---------------------------------------------------------------------------

_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Send the ``dhruva`` logger's records to the log file or stderr, plain or JSON [CFG-020]."""
    try:
        handler: logging.Handler = (
            logging.FileHandler(settings.log_file)
            if settings.log_file
            else logging.StreamHandler(sys.stderr)
        )
    except OSError as error:
        raise ConfigError(
            f"cannot open the log file {settings.log_file}: {error.strerror or error}"
        ) from None
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("dhruva")
    for old in logger.handlers:
        old.close()
    logger.handlers[:] = [handler]
    logger.setLevel(settings.log_level)
    logger.propagate = False
