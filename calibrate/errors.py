"""Errors of the profile file format, apart so that every module describing a profile can raise them."""

from __future__ import annotations


class ProfileError(ValueError):
    """A profile file is missing, malformed, of another schema version, or for another model/GPU."""
