"""API keys and HTTP facts shared by the cloud adapters.

Keys come only from the environment: the provider's usual variable (`OPENAI_API_KEY`,
`ANTHROPIC_API_KEY`) or the one named by the tier entry's `options.api_key_env`. They are read at
call time, handed to the SDK client and never stored, logged or put in an error message; a
missing key fails with an `AuthenticationError` naming the variable to set.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from typing import Any, Mapping

from engine.errors import AuthenticationError

_KEYLIKE = re.compile(r"\b(sk-(?:ant-|proj-)?)[A-Za-z0-9_\-*]{6,}")


def api_key(provider: str, options: Mapping[str, Any], default_env: str | None, model: str = "") -> str | None:
    """The key for this call, or None when the provider needs none (no variable configured)."""
    env = options.get("api_key_env") or default_env
    if not env:
        return None
    value = os.environ.get(str(env), "").strip()
    if not value:
        how = "" if options.get("api_key_env") else " (or name another variable in the tier's options.api_key_env)"
        raise AuthenticationError(f"{provider}: no API key: set the environment variable {env}{how}",
                                  provider=provider, model=model)
    return value


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


def redact(message: str, secret: str | None) -> str:
    """`message` with the key (and anything shaped like one) masked."""
    if secret:
        message = message.replace(secret, "***")
    return _KEYLIKE.sub(lambda m: m.group(1) + "***", message)
