"""Whether the Hugging Face hub can be reached, asked once and quickly before any hub download.

Resolving an ``hf-hub:`` name on a server without a network otherwise waits for the HTTP client's
connect timeouts and retries (about 25 s) before it fails. A TCP connect to the hub endpoint with a
short timeout tells the same in about a second, and the answer is kept for a minute so a page that
resolves several names asks once.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

__all__ = ["hub_offline_reason"]

_TTL_S = 60.0
_answers: dict[str, tuple[float, str | None]] = {}


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline_flag() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _connect(endpoint: str, timeout_s: float) -> str | None:
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"the Hugging Face hub ({parts.netloc or endpoint}) cannot be reached from this server ({exc})"


def hub_offline_reason(endpoint: str | None = None, *, timeout_s: float = 1.5) -> str | None:
    """Why the hub cannot be used now (``HF_HUB_OFFLINE`` set, or no connection), or None when it can."""
    if _offline_flag():
        return "HF_HUB_OFFLINE is set on this server, so only models already in the local cache can be used"
    url = endpoint or _endpoint()
    now = time.monotonic()
    cached = _answers.get(url)
    if cached is not None and now - cached[0] < _TTL_S:
        return cached[1]
    reason = _connect(url, timeout_s)
    _answers[url] = (now, reason)
    return reason
