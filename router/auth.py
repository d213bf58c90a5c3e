"""Who may act as an operator: the admin token and the `Authorization: Bearer` check.

The token is the value of the environment variable named by `router.admin_token_env`, read once
at startup. It authorizes the admin API (router.api.admin) and the QA header
`X-Variant-Override` on the request path (router.proxy.handler). Without a token nobody is
authorized.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Optional


class AdminAuth:
    """Whether an `Authorization` header carries the admin token (none configured: nobody)."""

    def __init__(self, token: Optional[str], variable: str) -> None:
        self._token = token
        self.variable = variable

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], variable: str) -> AdminAuth:
        return cls(admin_token(environ, variable), variable)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def allows(self, authorization: Optional[str]) -> bool:
        return bearer_token_ok(authorization, self._token)


def bearer_token_ok(authorization: Optional[str], token: Optional[str]) -> bool:
    """Whether an `Authorization: Bearer <token>` header carries the admin token.

    Compares SHA-256 digests with hmac.compare_digest, so the time taken says nothing about
    the token, its length included. No configured token authorizes nobody.
    """
    if not token or not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # surrogatepass: header bytes that are not UTF-8 arrive as lone surrogates (no match, no 500)
    given = hashlib.sha256(credentials.strip().encode("utf-8", "surrogatepass")).digest()
    expected = hashlib.sha256(token.encode("utf-8")).digest()
    return hmac.compare_digest(given, expected)


def admin_token(environ: Mapping[str, str], variable: str) -> Optional[str]:
    """The admin token from the environment variable named by `router.admin_token_env`."""
    value = environ.get(variable, "").strip()
    return value or None
