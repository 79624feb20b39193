"""Credentials never leave the process: a URL's user:password and secret-looking query values are
masked wherever a URL is logged, tracked (W&B config) or written (summary.json, errors)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_PARAM = re.compile(
    r"(?i)^(api[_-]?key|key|token|access[_-]?token|auth|authorization|secret|password|pass|pwd|"
    r"sig|signature|x-api-key)$"
)


def redact_url(url: str) -> str:
    """`url` with its user:password and secret query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if SECRET_PARAM.match(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(obj: Any) -> Any:
    """A copy of a config-like structure with every URL in it redacted."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str) and "://" in obj:
        return re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), obj)
    return obj
