"""Security settings fail closed: a value that is set but unusable stops start-up with one line
naming the variable, and never means "off"."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from gz.discovery import TargetError, build_resolver
from gz.middleware import auth
from gz.middleware.auth import TokenAuth
from gz.settings import ClientSettings, EtcdSettings, ServerSettings, SettingsError

from .support import free_port

pytestmark = pytest.mark.usefixtures("clean_environment")


def refused(settings: type[EtcdSettings], **variables: str) -> str:
    """The one-line message of the SettingsError that these variables cause."""
    os.environ.update(variables)
    try:
        with pytest.raises(SettingsError) as raised:
            settings.from_env()
    finally:
        for name in variables:
            del os.environ[name]
    message = str(raised.value)
    assert "\n" not in message
    return message


# -- bearer tokens -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [",", " ", "", " , ,"])
def test_auth_tokens_set_without_a_token_stop_start_up(text):
    message = refused(ServerSettings, GZ_AUTH_TOKENS=text)
    assert message.startswith("GZ_AUTH_TOKENS is set but holds no token")
    assert "unset it to switch authentication off" in message


@pytest.mark.parametrize("text", ["s3cret,,other", "s3cret,other,", ",s3cret"])
def test_an_empty_token_among_good_ones_is_refused_without_showing_them(text):
    message = refused(ServerSettings, GZ_AUTH_TOKENS=text)
    assert message.startswith("GZ_AUTH_TOKENS: token ") and "is empty" in message
    assert "s3cret" not in message and "other" not in message


def test_a_token_gRPC_metadata_cannot_carry_is_refused_without_showing_it():
    message = refused(ServerSettings, GZ_AUTH_TOKENS="good,sécret")
    assert "printable ASCII" in message and "sécret" not in message


def test_good_tokens_are_read_and_trimmed(clean_environment):
    clean_environment.setenv("GZ_AUTH_TOKENS", "one, two")
    assert ServerSettings.from_env().auth_tokens == ["one", "two"]
    assert ServerSettings.from_env(auth_tokens=[]).auth_tokens == []  # off, in code


@pytest.mark.parametrize("text", ["", "   "])
def test_a_client_token_set_empty_is_refused(text):
    message = refused(ClientSettings, GZ_AUTH_TOKEN=text)
    assert message.startswith("GZ_AUTH_TOKEN is set but empty")


def test_a_client_token_is_trimmed_and_never_shown(clean_environment):
    clean_environment.setenv("GZ_AUTH_TOKEN", " t0ken ")
    assert ClientSettings.from_env().auth_token == "t0ken"
    message = refused(ClientSettings, GZ_AUTH_TOKEN="t0kén")
    assert "GZ_AUTH_TOKEN" in message and "t0k" not in message


async def test_token_auth_compares_the_token_with_every_configured_one(monkeypatch):
    """No early exit at the first match: how long a check takes says nothing of which one."""
    compared = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    guard = TokenAuth(["first", "second", "third"])
    for token, accepted in (("first", True), ("third", True), ("nope", False)):
        compared.clear()
        assert await guard._accepts(token) is accepted
        assert len(compared) == 3


def test_token_auth_refuses_an_empty_token():
    with pytest.raises(ValueError, match="empty token"):
        TokenAuth(["good", " "])


# -- set but empty: never "off" --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (ServerSettings, "GZ_TLS_CERT"),
        (ServerSettings, "GZ_TLS_KEY"),
        (ClientSettings, "GZ_TLS_CA"),
        (ClientSettings, "GZ_TLS_CERT"),
        (ClientSettings, "GZ_ETCD_CA"),
        (ClientSettings, "GZ_ETCD_CERT"),
        (ClientSettings, "GZ_ETCD_KEYFILE"),
        (ClientSettings, "GZ_TLS_SERVER_NAME"),
        (ClientSettings, "GZ_ETCD_USERNAME"),
    ],
)
def test_a_security_variable_set_empty_is_refused(settings, variable):
    message = refused(settings, **{variable: ""})
    assert message.startswith(f"bad {variable}='': set but empty")


def test_an_etcd_password_without_a_user_is_refused_without_showing_it():
    message = refused(ClientSettings, GZ_ETCD_PASSWORD="pa55word")
    assert "GZ_ETCD_PASSWORD" in message and "GZ_ETCD_USERNAME" in message
    assert "pa55word" not in message


# -- certificate and key files ------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, str]) -> dict[str, str]:
    """Files that exist but hold no usable certificate or key."""
    from cryptography.hazmat.primitives import serialization

    directory = tmp_path_factory.mktemp("bad-pki")
    key = serialization.load_pem_private_key(Path(pki["server_key"]).read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    blobs = {
        "junk": b"this is no PEM file\n",
        "damaged_cert": b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----",
        "encrypted_key": encrypted,
    }
    files = {}
    for name, blob in blobs.items():
        path = directory / f"{name}.pem"
        path.write_bytes(blob)
        files[name] = str(path)
    return files


@pytest.mark.parametrize(
    ("cert", "key", "culprit", "problem"),
    [
        ("server_cert", "server_cert", "GZ_TLS_KEY", "not a private key (it holds: CERTIFICATE)"),
        ("server_key", "server_key", "GZ_TLS_CERT", "holds no certificate"),
        ("junk", "server_key", "GZ_TLS_CERT", "not a PEM file"),
        ("server_cert", "junk", "GZ_TLS_KEY", "not a PEM file"),
        ("damaged_cert", "server_key", "GZ_TLS_CERT", "does not parse"),
        ("server_cert", "encrypted_key", "GZ_TLS_KEY", "encrypted"),
    ],
)
@pytest.mark.parametrize("settings", [ServerSettings, ClientSettings])
def test_an_unusable_tls_file_is_named_with_its_problem(
    pki, bad_files, settings, cert, key, culprit, problem
):
    files = {**pki, **bad_files}
    message = refused(settings, GZ_TLS_CERT=files[cert], GZ_TLS_KEY=files[key])
    path = files[cert] if culprit == "GZ_TLS_CERT" else files[key]
    assert message.startswith(f"bad {culprit}={path!r}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("cert_variable", "key_variable", "settings"),
    [
        ("GZ_TLS_CERT", "GZ_TLS_KEY", ServerSettings),
        ("GZ_TLS_CERT", "GZ_TLS_KEY", ClientSettings),
        ("GZ_ETCD_CERT", "GZ_ETCD_KEYFILE", ClientSettings),
    ],
)
def test_a_key_of_another_certificate_is_named_with_both_files(
    pki, cert_variable, key_variable, settings
):
    message = refused(
        settings, **{cert_variable: pki["server_cert"], key_variable: pki["client_key"]}
    )
    assert message == (
        f"{cert_variable}={pki['server_cert']!r} and {key_variable}={pki['client_key']!r}: "
        "the key does not match the certificate (the first one in the file, which must be the "
        "key's own)"
    )


@pytest.mark.parametrize("variable", ["GZ_TLS_CA", "GZ_ETCD_CA"])
def test_a_ca_file_without_certificates_is_refused(pki, bad_files, variable):
    message = refused(ClientSettings, **{variable: pki["server_key"]})
    assert message.startswith(f"bad {variable}=") and "holds no certificate" in message
    message = refused(ClientSettings, **{variable: bad_files["damaged_cert"]})
    assert "does not parse" in message


def test_a_directory_is_not_a_certificate(tmp_path):
    message = refused(ClientSettings, GZ_TLS_CA=str(tmp_path))
    assert message == f"bad GZ_TLS_CA={str(tmp_path)!r}: a directory, not a file"


def test_good_files_are_accepted(clean_environment, pki):
    server = ServerSettings.from_env(
        tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["ca"]
    )
    assert server.tls_key == pki["server_key"]
    client = ClientSettings.from_env(
        tls_ca=pki["ca"], tls_cert=pki["client_cert"], tls_key=pki["client_key"],
        etcd_ca=pki["ca"], etcd_cert=pki["client_cert"], etcd_keyfile=pki["client_key"],
    )  # fmt: skip
    assert client.etcd_keyfile == pki["client_key"]


# -- port 0 is no peer's port ---------------------------------------------------------------------
@pytest.mark.parametrize("text", ["127.0.0.1:0", "10.0.0.1:2379,etcd-1:0"])
def test_etcd_endpoints_with_port_0_are_refused(text):
    message = refused(ClientSettings, GZ_ETCD_ENDPOINTS=text)
    assert message.startswith(f"bad GZ_ETCD_ENDPOINTS={text!r}") and "port 0" in message


@pytest.mark.parametrize(
    "target", ["etcd://127.0.0.1:0/greeter", "direct:///127.0.0.1:0", "dns:///localhost:0"]
)
def test_targets_with_port_0_are_refused(target):
    with pytest.raises(TargetError, match="has port 0"):
        build_resolver(target, ClientSettings.from_env())


def test_a_server_may_still_listen_on_port_0():
    assert ServerSettings.from_env(listen="127.0.0.1:0").listen == "127.0.0.1:0"


# -- the process: exit 2 (or 1 for a taken port) and gz's one line, with no grpc line before -------
async def exits_with_one_line(server, code: int) -> str:
    assert await server.wait_exit() == code
    lines = server.stderr().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


async def test_a_server_with_auth_tokens_but_no_token_does_not_start(server_process):
    line = await exits_with_one_line(server_process(GZ_AUTH_TOKENS=","), 2)
    assert line.startswith("gz: GZ_AUTH_TOKENS is set but holds no token")


async def test_a_key_that_does_not_match_is_blamed_not_the_listen_address(server_process, pki):
    server = server_process(GZ_TLS_CERT=pki["server_cert"], GZ_TLS_KEY=pki["client_key"])
    line = await exits_with_one_line(server, 2)
    assert line.startswith(
        f"gz: GZ_TLS_CERT={pki['server_cert']!r} and GZ_TLS_KEY={pki['client_key']!r}: "
        "the key does not match the certificate"
    )


async def test_a_key_grpc_refuses_is_blamed_not_the_listen_address(server_process, tmp_path):
    """An Ed448 certificate and key parse, and match, but grpc cannot serve TLS with them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed448
    from cryptography.x509.oid import NameOID

    key = ed448.Ed448PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = server_process(GZ_TLS_CERT=str(cert_path), GZ_TLS_KEY=str(key_path))
    line = await exits_with_one_line(server, 2)
    assert line.startswith(
        f"gz: GZ_TLS_CERT={str(cert_path)!r} and GZ_TLS_KEY={str(key_path)!r}: "
        "grpc cannot serve TLS with them"
    )


async def test_a_taken_port_is_one_line_with_no_grpc_log_before_it(server_process):
    import socket

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        server = server_process(GZ_LISTEN=f"127.0.0.1:{port}")
        line = await exits_with_one_line(server, 1)
    assert line == (
        f"gz: Greeter: cannot listen on GZ_LISTEN=127.0.0.1:{port}: another process listens there"
    )
