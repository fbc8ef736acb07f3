"""Who is calling: bearer JWTs for people, API keys for machines, three roles.

Tokens are verified against an identity provider's JWKS (``RADREPORT_AUTH_JWKS_URL``) or,
in the embedded default, against a key pair generated on first use under the data folder
(``radreport token --role radiologist`` signs with it). API keys are stored only as
SHA-256 digests. Errors say what is wrong with the credential, never anything about data.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import get_common_settings


class Role(StrEnum):
    radiologist = "radiologist"
    service = "service"
    admin = "admin"


class AuthError(Exception):
    """A missing, malformed, expired or forged credential (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    kind: str  # "user" (token) | "machine" (API key)


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_AUTH_", extra="ignore")

    issuer: str = Field(default="radreport-local", description="Expected `iss` of tokens")
    audience: str = Field(default="radreport", description="Expected `aud` of tokens")
    jwks_url: str | None = Field(default=None, description="An identity provider's JWKS; "
                                                           "empty: the local key pair")
    role_claim: str = Field(default="role", description="Claim holding the role")
    key_dir: Path | None = Field(default=None, description="Local keys and API keys; "
                                                           "default data_dir/keys")
    token_ttl_s: int = Field(default=900, gt=0, le=86400)

    @property
    def keys(self) -> Path:
        return self.key_dir or get_common_settings().data_dir / "keys"


@lru_cache
def get_auth_settings() -> AuthSettings:
    return AuthSettings()


ALGORITHM = "ES256"
PRIVATE_KEY_FILE, API_KEYS_FILE = "signing-key.pem", "api-keys.json"


def _private_key(folder: Path) -> ec.EllipticCurvePrivateKey:
    """The local signing key, made once (0600) on first use."""
    path = folder / PRIVATE_KEY_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = folder / f".{PRIVATE_KEY_FILE}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, path)  # fails if another process made the key first: use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def issue_token(subject: str, role: Role, settings: AuthSettings | None = None,
                ttl_s: int | None = None) -> str:
    """A short-lived token signed with the local key (the embedded default's login)."""
    settings = settings or get_auth_settings()
    now = int(time.time())
    claims = {"sub": subject, settings.role_claim: role.value, "iss": settings.issuer,
              "aud": settings.audience, "iat": now,
              "exp": now + (ttl_s if ttl_s is not None else settings.token_ttl_s)}
    return jwt.encode(claims, _private_key(settings.keys), algorithm=ALGORITHM)


def _hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_api_key(subject: str, role: Role = Role.service,
                   settings: AuthSettings | None = None) -> str:
    """A new machine key; only its digest is stored, so it is shown once."""
    settings = settings or get_auth_settings()
    path = settings.keys / API_KEYS_FILE
    keys = json.loads(path.read_text()) if path.is_file() else {}
    api_key = f"rrk_{secrets.token_urlsafe(32)}"
    keys[_hash(api_key)] = {"subject": subject, "role": role.value}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(keys, indent=1))
    path.chmod(0o600)
    return api_key


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url) if settings.jwks_url else None
        self._public = None if self._jwks else _private_key(settings.keys).public_key()

    def verify_token(self, token: str) -> Principal:
        try:
            key: Any = (self._jwks.get_signing_key_from_jwt(token).key if self._jwks
                        else self._public)
            claims = jwt.decode(token, key, algorithms=["ES256", "RS256", "PS256"],
                                audience=self.settings.audience, issuer=self.settings.issuer,
                                options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError as err:
            raise AuthError("the token has expired") from err
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as err:
            raise AuthError("the token is not valid") from err
        try:
            role = Role(str(claims.get(self.settings.role_claim)))
        except ValueError as err:
            raise AuthError("the token carries no known role") from err
        return Principal(str(claims["sub"])[:128], role, "user")

    def verify_api_key(self, api_key: str) -> Principal:
        path = self.settings.keys / API_KEYS_FILE
        keys = json.loads(path.read_text()) if path.is_file() else {}
        entry = keys.get(_hash(api_key))
        if entry is None:
            raise AuthError("the API key is not valid")
        return Principal(str(entry["subject"]), Role(entry["role"]), "machine")
