"""A Graph app's certificate credential for tests: a self-signed RSA certificate made with
``cryptography`` (as ``openssl req -x509`` would make it), and client assertions signed with it.

``cert_pem`` is the public part (what is uploaded to the app registration, and what the emulator's
``--graph-app-cert`` takes); ``key_pem`` holds the private key followed by the certificate (what
crmsync's ``exchange.certificate_path`` reads). ``thumbprint`` is the SHA-1 thumbprint in hex, as
Entra ID shows it.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class AppCert:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    cert_pem: Path
    key_pem: Path

    @property
    def thumbprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA1()).hex().upper()

    @property
    def private_pem(self) -> str:
        return self.key_pem.read_text()


def make_app_cert(directory: str | Path, name: str = "crmsync-app", *, days: int = 365,
                  not_before: datetime.datetime | None = None) -> AppCert:
    """A fresh 2048-bit RSA key and a self-signed certificate for it, written under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_bytes = cert.public_bytes(serialization.Encoding.PEM)
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    stem = f"{name}-{uuid.uuid4().hex[:6]}"
    cert_pem, key_pem = directory / f"{stem}.crt.pem", directory / f"{stem}.key.pem"
    cert_pem.write_bytes(cert_bytes)
    key_pem.write_bytes(key_bytes + cert_bytes)
    key_pem.chmod(0o600)
    return AppCert(key=key, cert=cert, cert_pem=cert_pem, key_pem=key_pem)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def client_assertion(signer: AppCert, client_id: str, audience: str, *, named: AppCert | None = None,
                     alg: str = "RS256", sha256_thumbprint: bool = False, lifetime: int = 600,
                     now: float | None = None, drop: tuple[str, ...] = (), **claims: Any) -> str:
    """A ``private_key_jwt`` client assertion as the Microsoft identity platform documents it,
    signed with ``signer``'s key; the header names ``named``'s certificate (default: the signer's).
    ``claims`` override or add claims; ``drop`` removes claims or header fields."""
    now = time.time() if now is None else now
    cert = (named or signer).cert
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if sha256_thumbprint:
        header["x5t#S256"] = _b64url(cert.fingerprint(hashes.SHA256()))
    else:
        header["x5t"] = _b64url(cert.fingerprint(hashes.SHA1()))
    body: dict[str, Any] = {"aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
                            "iat": int(now), "nbf": int(now), "exp": int(now) + lifetime, **claims}
    for name in drop:
        header.pop(name, None)
        body.pop(name, None)
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(body).encode())}".encode()
    pad = (padding.PKCS1v15() if alg == "RS256"
           else padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH))
    return signing_input.decode() + "." + _b64url(signer.key.sign(signing_input, pad, hashes.SHA256()))
