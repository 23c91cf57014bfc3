"""Visible strings go through :func:`_` so that a message catalog can translate them later.

For now it returns the English text unchanged; the templates call it as ``_("...")``.
"""

from __future__ import annotations


def _(message: str) -> str:
    """The text of ``message`` in the page's language (English until catalogs exist)."""
    return message
