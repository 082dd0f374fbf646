"""What people may set on a video -- its title and tags -- checked and normalised in one place, for the
API (``PATCH /api/videos/<id>``), the CLI (``vidseek tag``) and the tag filter of a search.

A tag is normalised to Unicode NFKC, lower case, with its runs of whitespace made one space and its ends
stripped: ``" Beach  Day"`` is stored, shown and matched as ``"beach day"``. It holds 1 to
``MAX_TAG_CHARS`` characters, no control characters and no comma (commas separate tags in a URL and on
the command line). A video has at most ``MAX_TAGS`` tags; duplicates after normalisation count once.
A title is stripped, 1 to ``MAX_TITLE_CHARS`` characters, without control characters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from search.tables import MAX_TAG_CHARS

MAX_TAGS = 20  # tags of one video, and tags one search may require
MAX_TITLE_CHARS = 512  # the column's size


class MetadataError(ValueError):
    """A title or tag that cannot be stored; the message says which and why."""


def _printable(value: str) -> bool:
    """No control, format, surrogate or unassigned characters (category C*): nothing a database or a
    terminal would choke on."""
    return not any(unicodedata.category(ch).startswith("C") for ch in value)


def normalise_tag(tag: object) -> str:
    if not isinstance(tag, str):
        raise MetadataError("tags must be strings")
    text = " ".join(unicodedata.normalize("NFKC", tag).split()).lower()
    if not 1 <= len(text) <= MAX_TAG_CHARS:
        raise MetadataError(f"a tag must have 1 to {MAX_TAG_CHARS} characters; got {tag!r}")
    if "," in text or not _printable(text):
        raise MetadataError(f"a tag must not contain commas or control characters; got {tag!r}")
    return text


def normalise_tags(tags: Iterable[object]) -> tuple[str, ...]:
    """The distinct normalised tags, sorted; :class:`MetadataError` for a bad one or more than ``MAX_TAGS``."""
    distinct = sorted({normalise_tag(t) for t in tags})
    if len(distinct) > MAX_TAGS:
        raise MetadataError(f"at most {MAX_TAGS} tags; got {len(distinct)}")
    return tuple(distinct)


def normalise_title(title: object) -> str:
    if not isinstance(title, str):
        raise MetadataError("title must be a string")
    text = title.strip()
    if not 1 <= len(text) <= MAX_TITLE_CHARS:
        raise MetadataError(f"title must have 1 to {MAX_TITLE_CHARS} characters")
    if not _printable(text):
        raise MetadataError("title must not contain control characters")
    return text


def split_tags(text: str) -> list[str]:
    """Comma-separated tags as typed in a URL or on the command line (empty parts dropped)."""
    return [part for part in text.split(",") if part.strip()]
