"""A browser's way in (``/docs``, ``/redoc``, ``/dashboard``) without any unauthenticated route.

A browser cannot add an ``Authorization: Bearer`` header to a page it navigates to, so pages
that ask for HTML get a ``WWW-Authenticate: Basic`` challenge: the browser shows its own sign-in
box, the user pastes the API key (or an OIDC token) as the *password* (the user name is ignored),
and the browser sends it with every later request to this server, the API description the page
fetches included. Scripts keep the Bearer challenge. Use HTTPS (``--tls-cert``) for anything but
loopback: Basic credentials are only base64-encoded.
"""

from __future__ import annotations

import base64
import binascii

from aiportal.server.auth import AuthError

BEARER_CHALLENGE = 'Bearer realm="aiportal"'
BASIC_CHALLENGE = 'Basic realm="aiportal: user name anything, password your API key", charset="UTF-8"'


def challenge(accept: str | None) -> str:
    """The ``WWW-Authenticate`` value of a 401: Basic for a browser asking for a page, else Bearer."""
    return BASIC_CHALLENGE if "text/html" in (accept or "") else BEARER_CHALLENGE


def basic_password(value: str) -> str:
    """The password of an ``Authorization: Basic`` value (the credential)."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise AuthError(401, "malformed Basic credentials", "enter the API key as the password") from error
    _user, separator, password = decoded.partition(":")
    if not separator or not password.strip():
        raise AuthError(401, "no password in the Basic credentials", "enter the API key as the password")
    return password.strip()
