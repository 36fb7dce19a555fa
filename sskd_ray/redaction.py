"""The one place that hides secrets before anything is printed or stored (issue 22).

What counts as a secret: the userinfo of a URI (`scheme://user:password@host/...` ->
`scheme://***@host/...`), and the value of every query parameter whose name looks like a credential
(`?access_key=...&secret_key=...&X-Amz-Signature=...` -> `access_key=***` ...). Everything else of
the URI stays as it was, so a redacted location still says where things are. Config values whose
*key* looks like a credential (e.g. `tracking.token`) are hidden whole.

Only what is printed or written goes through here; connections keep using the real values.
Credentials belong in the environment (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, AWS_*,
GOOGLE_APPLICATION_CREDENTIALS), never inside a URI: see docs/cluster.md.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"
# substrings of a (lower-cased) parameter or key name that mark it as a credential
SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "pwd", "signature", "credential", "sig",
                "auth", "session", "private", "cookie")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def is_secret_name(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact_uri(uri: str) -> str:
    """One URI with its userinfo and secret-looking query values replaced by ***."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = f"{MASK}@{authority.rsplit('@', 1)[1]}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hashmark, fragment = query.partition("#")
        parts = []
        for part in query.split("&"):
            name, eq, _ = part.partition("=")
            parts.append(f"{name}={MASK}" if eq and is_secret_name(name) else part)
        tail = path + "?" + "&".join(parts) + (hashmark + fragment)
    return f"{scheme}://{authority}{tail}"


def redact_text(text: str) -> str:
    """Every URI inside free text (a log line, an error message) redacted."""
    return _URI.sub(lambda m: redact_uri(m.group(0)), text)


def redact(value: Any) -> Any:
    """A string, or any nesting of dicts / lists / tuples of them, with secrets replaced by ***.
    Dict values under secret-looking keys are hidden whole; other values keep their type."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _is_secret_key(key: str) -> bool:
    """A config key (`a.b.c`) whose last part names a credential; `key` alone (e.g. the store's
    image key column) and `*_key` fields that hold names, not secrets, are listed in NOT_SECRET."""
    last = key.rsplit(".", 1)[-1]
    return last not in NOT_SECRET and is_secret_name(last)


NOT_SECRET = {"key", "id_column", "sort_key", "keys"}
