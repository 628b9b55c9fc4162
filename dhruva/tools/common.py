"""What every ``dhruva`` subcommand shares: the one-line error, the server's address
and the settings that name it, and the client connection built from them.

The command line (:mod:`dhruva.tools.cli`) and the tools it registers
(:mod:`dhruva.tools.admin`, :mod:`dhruva.tools.dbtools`,
:mod:`dhruva.tools.mcp_server`) all import this module; it imports none of
them, so the tools and the command line form no import circle.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dhruva.error import DhruvaError
from dhruva.server.address import DEFAULT_HOST, DEFAULT_PORT, Address
from dhruva.tools import config as dconfig

if TYPE_CHECKING:
    from dhruva.client_storage import ClientStorage

__all__ = [
    "CLIENT_SECURITY_KEYS",
    "CommandError",
    "add_address_options",
    "address_from",
    "connect_client",
    "open_client",
    "settings_from",
]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def add_address_options(parser: argparse.ArgumentParser) -> None:
    """The options that name a server: --host, --port, --address."""
    group = parser.add_argument_group("server address")
    # Defaults are None ("not given") so that a config file or DHRUVA_HOST /
    # DHRUVA_PORT can supply them (see dhruva.tools.config).
    group.add_argument(
        "--host", default=None, help=f"TCP host of the server (default {DEFAULT_HOST})"
    )
    group.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"TCP port of the server (default {DEFAULT_PORT}; 0 picks a free port for -s)",
    )
    group.add_argument(
        "--address",
        metavar="SOCKET",
        default=None,
        help="path of a Unix socket to use instead of TCP host and port",
    )


def settings_from(args: argparse.Namespace) -> dconfig.Settings:
    """The effective settings: defaults, config file, DHRUVA_* variables, then ``args``."""
    try:
        return dconfig.load_settings(args)
    except dconfig.ConfigError as error:
        raise CommandError(str(error)) from None


def address_from(args: argparse.Namespace) -> Address:
    """The server address named by ``args``, the config file or the environment."""
    return settings_from(args).server_address()


def open_client(settings: dconfig.Settings) -> ClientStorage:
    """Connect to the server the settings name, with their TLS and secret (may raise)."""
    from dhruva.client_storage import ClientStorage

    return ClientStorage(
        settings.server_address(),
        tls=settings.client_tls_context(),
        secret=settings.secret_bytes(),
        server_hostname=settings.tls_server_name,
    )


def connect_client(settings: dconfig.Settings) -> ClientStorage:
    """A ClientStorage for the server the settings name (TLS and secret included).

    User errors (no server, wrong secret, TLS mismatch) become CommandError.
    """
    try:
        return open_client(settings)
    except DhruvaError as error:
        raise CommandError(str(error)) from None


CLIENT_SECURITY_KEYS = [
    "secret_file",
    "tls",
    "tls_ca",
    "tls_client_cert",
    "tls_client_key",
    "tls_server_name",
]
