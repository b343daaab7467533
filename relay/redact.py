"""Statsig server secrets kept out of what the relay forwards to anyone but Statsig.

Statsig's server SDKs put the URL they fetch config specs from, server secret included
(``…?k=secret-…``), into the metadata of their ``statsig::diagnostics`` events. Such events
reach a non-Statsig target only when a route names them (relay/router.py), and every row bound
for a non-Statsig target has each ``secret-`` key in it (``secret-`` and the letters and
digits after it, as a Statsig server secret is written) replaced by ``secret-REDACTED``, in
any event and any field. Rows for a ``statsig`` target are left as they are: Statsig issued
the key.

The work is on the row's JSON bytes, where a key is a run of ASCII letters and digits (no
escapes, no structure), so nothing is decoded and the event count is unchanged; a row without
``secret-`` costs one substring search (~0.2 ns per byte).
"""

from __future__ import annotations

import re

SECRET_PREFIX = b"secret-"
REDACTED = b"secret-REDACTED"
_SECRET = re.compile(rb"secret-(?!REDACTED\b)[A-Za-z0-9]+")


def redact_secrets(body: bytes) -> tuple[bytes, int]:
    """``body`` with every Statsig server secret in it replaced, and how many there were."""
    if body.rfind(SECRET_PREFIX) < 0:  # CPython's reverse search: 9 µs on 41 KB, ``in`` 25
        return body, 0
    return _SECRET.subn(REDACTED, body)
