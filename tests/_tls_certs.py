"""Test certificates, made at test time (never stored in the repository).

``make_certificates(directory)`` writes a private CA, a server certificate for
``localhost`` and ``127.0.0.1`` signed by it, a client certificate signed by
it, and a client certificate signed by another CA (for refusals).  It uses the
``cryptography`` package (the ``test`` extra) when importable, else the
``openssl`` command; with neither the calling test is skipped with the reason.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certificates:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_client_cert: str
    rogue_client_key: str
    rogue_ca: str


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        return _with_openssl(directory)
    return _with_cryptography(directory)


def _paths(directory: Path) -> Certificates:
    d = str(directory)
    return Certificates(
        ca=f"{d}/ca.pem",
        server_cert=f"{d}/server.pem",
        server_key=f"{d}/server.key",
        client_cert=f"{d}/client.pem",
        client_key=f"{d}/client.key",
        rogue_client_cert=f"{d}/rogue-client.pem",
        rogue_client_key=f"{d}/rogue-client.key",
        rogue_ca=f"{d}/rogue-ca.pem",
    )


def _with_cryptography(directory: Path) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    paths = _paths(directory)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: str) -> None:
        Path(path).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def make_ca(common_name: str, path: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        Path(path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key, cert.subject

    def make_leaf(
        ca_key: ec.EllipticCurvePrivateKey,
        ca_name: x509.Name,
        common_name: str,
        server: bool,
        cert_path: str,
        key_path: str,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, key_path)

    ca_key, ca_name = make_ca("dhruva test CA", paths.ca)
    rogue_key, rogue_name = make_ca("rogue CA", paths.rogue_ca)
    make_leaf(ca_key, ca_name, "localhost", True, paths.server_cert, paths.server_key)
    make_leaf(ca_key, ca_name, "dhruva client", False, paths.client_cert, paths.client_key)
    make_leaf(
        rogue_key,
        rogue_name,
        "rogue client",
        False,
        paths.rogue_client_cert,
        paths.rogue_client_key,
    )
    return paths


def _with_openssl(directory: Path) -> Certificates:
    paths = _paths(directory)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def make_ca(common_name: str, cert: str, key: str) -> None:
        run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={common_name}",
        )  # fmt: skip

    def make_leaf(
        ca: str, ca_key: str, common_name: str, server: bool, cert: str, key: str
    ) -> None:
        ext = Path(cert + ".ext")
        lines = ["basicConstraints=CA:FALSE"]
        if server:
            lines += ["extendedKeyUsage=serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        else:
            lines += ["extendedKeyUsage=clientAuth"]
        ext.write_text("\n".join(lines) + "\n")
        run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", cert + ".csr", "-subj", f"/CN={common_name}",
        )  # fmt: skip
        run(
            "x509", "-req", "-in", cert + ".csr", "-CA", ca, "-CAkey", ca_key,
            "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", str(ext),
        )  # fmt: skip

    ca_key = str(directory / "ca.key")
    rogue_key = str(directory / "rogue-ca.key")
    make_ca("dhruva test CA", paths.ca, ca_key)
    make_ca("rogue CA", paths.rogue_ca, rogue_key)
    make_leaf(paths.ca, ca_key, "localhost", True, paths.server_cert, paths.server_key)
    make_leaf(paths.ca, ca_key, "dhruva client", False, paths.client_cert, paths.client_key)
    make_leaf(
        paths.rogue_ca,
        rogue_key,
        "rogue client",
        False,
        paths.rogue_client_cert,
        paths.rogue_client_key,
    )
    return paths
