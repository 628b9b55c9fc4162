"""The ``dhruva`` command with TLS, a shared secret, limits, configuration and logging.

Spec: server.md ("Security", "Configuration", "Logging", CLI-023, CLI-024).
Servers are ``dhruva -s`` child processes on Unix sockets, killed by pid at
the end (the ``start_server`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from _dhruva_command import Server, one_line_error, run
from _tls_certs import Certificates, make_certificates

from dhruva.client_storage import ClientStorage
from dhruva.error import ReadOnlyError
from dhruva.file_storage import FileStorage
from dhruva.tools.config import Settings, load_settings
from dhruva.utils import ROOT_OID

SECRET = "s3cret-that-must-never-be-logged-4f9a2c"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.req("CLI-023", "SRV-081", "SRV-084")
def test_tls_and_secret_end_to_end(
    start_server: Callable[..., Server], certs: Certificates, secret_file: str, tmp_path: Path
) -> None:
    tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    server = start_server(*tls, "--secret-file", secret_file, "--loglevel", "DEBUG")
    # An idle client that never sends its TLS ClientHello must block nobody,
    # not even --stop (the predecessor froze here).
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(server.socket)
    try:
        client = ["--address", server.socket, "--tls-ca", certs.ca, "--secret-file", secret_file]
        wrote = run("-c", *client, stdin='root["x"] = 1\nconnection.commit()\n')
        assert wrote.returncode == 0, wrote.stderr
        read = run("-c", *client, stdin='print(root["x"])\n')
        assert read.stdout.strip() == "1", read.stderr
        # --stop with the server's own settings: TLS pinned to its certificate.
        stopped = run(
            "-s", "--stop", "--address", server.socket, *tls, "--secret-file", secret_file
        )
        assert stopped.returncode == 0, stopped.stderr
        assert server.wait() == 0
    finally:
        idle.close()
    log = server.log_text()
    assert "authenticated yes" in log
    assert SECRET not in log


@pytest.mark.req("CLI-024", "CLI-010")
def test_refusals_are_one_line_errors(
    start_server: Callable[..., Server], certs: Certificates, secret_file: str, tmp_path: Path
) -> None:
    tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    server = start_server(*tls, "--secret-file", secret_file)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the secret\n")
    address = ["--address", server.socket]
    line = one_line_error(run("-c", *address, "--tls-ca", certs.ca, "--secret-file", str(wrong)))
    assert "refused the shared secret" in line
    line = one_line_error(run("-c", *address, "--tls-ca", certs.ca))
    assert "requires authentication" in line
    line = one_line_error(run("-c", *address, "--secret-file", secret_file))
    assert "requires TLS" in line
    line = one_line_error(run("-s", "--stop", *address, "--secret-file", secret_file))
    assert "requires TLS" in line
    line = one_line_error(run("-s", "--stop", *address, *tls))
    assert "requires authentication" in line
    assert server.process.poll() is None  # none of that stopped it
    assert SECRET not in server.log_text()


@pytest.mark.req("SRV-060")
def test_readonly_server_refuses_commits_and_packs(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    path = str(tmp_path / "ro.dhruva")
    storage = FileStorage(path)
    storage.begin()
    storage.store(ROOT_OID, b"root", b"")
    storage.end()
    storage.close()
    server = start_server("--file", path, "--readonly")
    client = ClientStorage(server.socket)
    assert client.load(ROOT_OID).data == b"root"
    client.begin()
    client.store(ROOT_OID, b"changed", b"")
    with pytest.raises(ReadOnlyError, match="read-only"):
        client.end()
    with pytest.raises(ReadOnlyError):
        client.pack()
    client.close()


@pytest.mark.req("CFG-020")
def test_json_log_lines(start_server: Callable[..., Server]) -> None:
    server = start_server("--log-format", "json")
    ClientStorage(server.socket).close()
    stopped = run("-s", "--stop", "--address", server.socket)
    assert stopped.returncode == 0
    assert server.wait() == 0
    entries = [json.loads(line) for line in server.log_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    events = {entry.get("event") for entry in entries}
    assert {"listening", "connect", "ready"} <= events


# --- configuration -------------------------------------------------------------------


@pytest.mark.req("CFG-001", "CFG-010", "CFG-011")
def test_dhruva_config_shows_sources_and_hides_secrets(tmp_path: Path) -> None:
    config = tmp_path / "dhruva.toml"
    config.write_text('port = 3000\nhost = "127.0.0.2"\nlog_format = "json"\n')
    env = {**os.environ, "DHRUVA_PORT": "3001", "DHRUVA_SECRET": SECRET}
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "dhruva", "config", "--config", str(config), "--loglevel", "debug"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines()}
    assert "3001" in lines["port"] and "env DHRUVA_PORT" in lines["port"]
    assert "127.0.0.2" in lines["host"] and f"file {config}" in lines["host"]
    assert "DEBUG" in lines["log_level"] and "flag --loglevel" in lines["log_level"]
    assert "(default)" in lines["idle_timeout_s"]
    assert "<set>" in lines["secret"]
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.req("CFG-001")
def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("port = 1\nreadonly = true\nhandshake_timeout_s = 3\n")
    settings = load_settings(
        {"port": 3}, str(config), {"DHRUVA_PORT": "2", "DHRUVA_IDLE_TIMEOUT_S": "7"}
    )
    assert settings.port == 3 and settings.sources["port"] == "flag --port"
    assert settings.readonly is True and settings.sources["readonly"] == f"file {config}"
    assert settings.handshake_timeout_s == 3.0
    assert (
        settings.idle_timeout_s == 7.0
        and settings.sources["idle_timeout_s"] == "env DHRUVA_IDLE_TIMEOUT_S"
    )
    assert load_settings({}, None, {}) == Settings()
    env_file = load_settings({}, None, {"DHRUVA_CONFIG": str(config)})
    assert env_file.port == 1


@pytest.mark.req("CFG-003")
def test_bad_configuration_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("prot = 3000\n")
    line = one_line_error(run("config", "--config", str(config)))
    assert "unknown setting 'prot'" in line
    config.write_text('port = "many"\n')
    assert "port must be" in one_line_error(run("-s", "--config", str(config)))
    config.write_text('secret = "x"\n')
    assert "secret_file" in one_line_error(run("config", "--config", str(config)))
    config.write_text("[broken\n")
    assert "not valid TOML" in one_line_error(run("config", "--config", str(config)))


def test_server_reads_its_address_from_the_config_file(tmp_path: Path) -> None:
    sock = tmp_path / "from-config.sock"
    log = tmp_path / "log"
    config = tmp_path / "server.toml"
    config.write_text(f'address = "{sock}"\nlog_file = "{log}"\n')
    import subprocess
    import sys
    import time

    env = {**os.environ, "DHRUVA_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dhruva", "-s"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "listening on" in log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        stopped = subprocess.run(
            [sys.executable, "-m", "dhruva", "-s", "--stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.req("CFG-002")
def test_settings_in_a_dhruva_table(tmp_path: Path) -> None:
    config = tmp_path / "table.toml"
    config.write_text('[dhruva]\nport = 4000\nlog_format = "json"\n')
    settings = load_settings({}, str(config), {})
    assert settings.port == 4000 and settings.log_format == "json"
    assert settings.sources["port"] == f"file {config}"
