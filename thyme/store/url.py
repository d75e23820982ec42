"""Store URLs: which store is meant, and how to print one without its password."""

from __future__ import annotations

import os
import re
from typing import Final

ENV_STORE_URL: Final = "THYME_STORE_URL"
DEFAULT_STORE_URL: Final = "sqlite:///thyme.db"


def store_url(explicit: str | None = None) -> str:
    """The store URL in force: the explicit one, else ``THYME_STORE_URL``, else ``sqlite:///thyme.db``."""
    return explicit or os.environ.get(ENV_STORE_URL) or DEFAULT_STORE_URL


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and errors): everything between
    ``user:`` and the URL's last ``@`` (so a password that was not percent-encoded is hidden
    whole; an ``@`` later in the URL only hides more), and ``password``/``sslpassword`` query values."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{after}"
    return f"{scheme}://{_QUERY_SECRET.sub(_hide, rest)}"


_QUERY_SECRET: Final = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")


def _hide(match: re.Match[str]) -> str:
    return f"{match[1]}***"
