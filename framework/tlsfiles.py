"""Checks of certificate and key files, made when settings are read: a file gz cannot use stops
start-up with a line saying what is wrong with it, before grpc sees it (grpc would only log
``Invalid private key`` and refuse to listen, with nothing naming the setting).

``cryptography`` is imported here, inside the functions, so that only processes with TLS
settings pay for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from cryptography.x509 import Certificate

_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def _pem_labels(path: str) -> tuple[bytes, list[str]]:
    """The file's bytes and the labels of its PEM blocks; ValueError if it has none."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read it: {error.strerror or error}") from None
    labels = [label.decode() for label in _LABEL.findall(data)]
    if not labels:
        raise ValueError("not a PEM file (no '-----BEGIN ...-----' line): gz reads PEM only")
    return data, labels


def _holds(labels: list[str]) -> str:
    return ", ".join(sorted(set(labels)))


def load_certificates(path: str) -> list[Certificate]:
    """The certificates of a PEM file, the first one first; ValueError saying what is wrong."""
    data, labels = _pem_labels(path)
    if "CERTIFICATE" not in labels:
        raise ValueError(f"holds no certificate (it holds: {_holds(labels)})")
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError("a certificate in it does not parse (damaged or not X.509)") from None


def load_private_key(path: str) -> PrivateKeyTypes:
    """The private key of a PEM file; ValueError saying what is wrong."""
    data, labels = _pem_labels(path)
    if not any(label.endswith("PRIVATE KEY") for label in labels):
        raise ValueError(f"not a private key (it holds: {_holds(labels)})")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise ValueError(
            "the private key is encrypted and gz takes no passphrase: give it decrypted "
            "(openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(f"the private key does not parse ({_first_sentence(error)})") from None


def key_matches_certificate(certificate_path: str, key_path: str) -> bool:
    """Whether the key is the private key of the first certificate in ``certificate_path``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    certificate_key = load_certificates(certificate_path)[0].public_key()
    private_key = load_private_key(key_path).public_key()
    spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    return certificate_key.public_bytes(*spki) == private_key.public_bytes(*spki)


def _first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0].rstrip(".")
