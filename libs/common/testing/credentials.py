"""Throwaway credentials for the local fake venues, made when a run starts.

No key or secret lives in the repository, not even a fake one: the fakes accept the pair made
here (or one given through FLOTILLA_FAKE_VENUE_KEY / FLOTILLA_FAKE_VENUE_SECRET, so a demo fleet
in another process can be given the same pair), and tests hand the same values to the SDKs.
"""

from __future__ import annotations

import os
import secrets

KEY_ENV = "FLOTILLA_FAKE_VENUE_KEY"
SECRET_ENV = "FLOTILLA_FAKE_VENUE_SECRET"


def throwaway_pair(label: str) -> tuple[str, str]:
    """A fresh random (key, secret), labelled so a log line shows which fake it belongs to."""
    return f"{label}-{secrets.token_hex(8)}", secrets.token_urlsafe(24)


def fake_venue_pair(label: str) -> tuple[str, str]:
    """The pair a fake venue accepts: from the environment when set, else made now."""
    key, secret = os.environ.get(KEY_ENV), os.environ.get(SECRET_ENV)
    if key and secret:
        return key, secret
    return throwaway_pair(label)
