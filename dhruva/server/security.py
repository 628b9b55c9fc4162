"""Authentication proofs and TLS contexts for the storage server and its clients.

Spec: ``spec/wire-protocol.md`` ("Authentication") and ``spec/server.md``
("Security").

Authentication is a shared secret proven by HMAC-SHA256 challenge-response;
the secret itself never travels.  The server sends a fresh random nonce, the
client answers with a nonce of its own and ``HMAC(secret, CLIENT_LABEL ||
server_nonce || client_nonce)``; the server, once it has checked that, answers
with ``HMAC(secret, SERVER_LABEL || server_nonce || client_nonce)``, so the
client knows it talks to a server that holds the secret too.  The two labels
differ so that neither side's proof can be replayed as the other's.  The
functions here are pure (bytes in, bytes out); the server and the client move
the messages.

TLS uses the standard :mod:`ssl` module; :func:`server_context` and
:func:`client_context` build the contexts from file paths, TLS 1.2 or later.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import stat

from dhruva.error import DhruvaError

AUTH_MECHANISM = "hmac-sha256"
"""The one authentication mechanism of protocol 1 [WIRE-031]."""

NONCE_SIZE = 32
PROOF_SIZE = hashlib.sha256().digest_size
assert PROOF_SIZE == 32

CLIENT_LABEL = b"dhruva-auth-v1 client\x00"
"""Prefix of the message the client's proof authenticates [WIRE-031]."""
SERVER_LABEL = b"dhruva-auth-v1 server\x00"
"""Prefix of the message the server's proof authenticates [WIRE-032]."""


class SecretError(DhruvaError):
    """The shared secret could not be read, or is unusable (empty)."""


def new_nonce() -> bytes:
    """Return 32 bytes from the operating system's secure random source."""
    return secrets.token_bytes(NONCE_SIZE)


def _proof(label: bytes, secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, label + server_nonce + client_nonce, hashlib.sha256).digest()


def client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """Return the client's proof of ``secret`` for this pair of nonces [WIRE-031]."""
    return _proof(CLIENT_LABEL, secret, server_nonce, client_nonce)


def server_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """Return the server's proof of ``secret`` for this pair of nonces [WIRE-032]."""
    return _proof(SERVER_LABEL, secret, server_nonce, client_nonce)


def proofs_equal(expected: bytes, given: bytes) -> bool:
    """Compare two proofs in constant time [WIRE-031]."""
    return hmac.compare_digest(expected, given)


def secret_bytes(secret: bytes | str) -> bytes:
    """Return ``secret`` as bytes (text is UTF-8); raise SecretError when it is empty."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise SecretError("the shared secret is empty; use at least 32 random bytes")
    return raw


def read_secret_file(path: str) -> bytes:
    """Return the secret stored in ``path``: its bytes without trailing newlines.

    Raises SecretError when the file cannot be read or holds nothing.  The
    message names the file, never its contents.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise SecretError(
            f"cannot read the secret file {path}: {error.strerror or error}"
        ) from None
    raw = raw.rstrip(b"\r\n")
    if not raw:
        raise SecretError(f"the secret file {path} is empty; put at least 32 random bytes in it")
    return raw


def secret_file_is_private(path: str) -> bool:
    """True when nobody but the owner may read or write ``path``."""
    try:
        return not os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    except OSError:
        return False


def server_context(
    cert: str, key: str | None = None, ca: str | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """Return a server-side TLS context for certificate ``cert`` and private key ``key``.

    ``ca`` is a PEM bundle of the authorities whose client certificates are
    accepted; with ``require_client_cert`` a client without a valid
    certificate is refused during the TLS handshake.  Raises SecretError
    (naming the files) when they cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca:
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise SecretError(f"cannot load the TLS certificate {cert} / key {key}: {error}") from None
    if require_client_cert:
        if not ca:
            raise SecretError("requiring client certificates needs a CA bundle (tls_ca)")
        context.verify_mode = ssl.CERT_REQUIRED
    elif ca:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    pinned_cert: str | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Return a client-side TLS context.

    The server is verified against ``ca`` (a PEM bundle), else against
    ``pinned_cert`` (the server's own certificate, trusted as is: what
    ``dhruva -s --stop`` uses with the server's settings), else against the
    system's trusted authorities.  ``cert``/``key`` are the client
    certificate, for servers that require one.  Raises SecretError when a file
    cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        if ca:
            context.load_verify_locations(cafile=ca)
        elif pinned_cert:
            context.load_verify_locations(cafile=pinned_cert)
            # A leaf certificate trusted on its own is not a self-signed root.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise SecretError(f"cannot load TLS files (ca {ca}, cert {cert}): {error}") from None
    return context
