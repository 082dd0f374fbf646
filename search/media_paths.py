"""Which files vidseek may read: paths are confined to the configured media roots."""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp", ".ogv"}
)


class PathNotAllowed(ValueError):
    """The path resolves outside every media root."""


class MediaRejected(ValueError):
    """The file is not a usable video (empty, not a container, no video stream, corrupt)."""


def confine(path: str | Path, roots: tuple[Path, ...]) -> Path:
    """Resolve ``path`` (following symlinks, ``..``) and return it if it lies inside one of
    ``roots``; relative paths are taken relative to the first root.

    Raises:
        PathNotAllowed: the resolved path escapes every root (``../../etc/passwd``, a symlink
            pointing outside, an absolute path elsewhere).
    """
    raw = Path(path).expanduser()
    if not roots:
        raise PathNotAllowed("no media roots are configured (VIDSEEK_MEDIA_ROOTS)")
    candidate = raw if raw.is_absolute() else roots[0] / raw
    resolved = candidate.resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathNotAllowed(f"{path} is outside the media roots ({', '.join(str(r) for r in roots)})")


def require_utf8_name(path: Path) -> None:
    """Raise :class:`MediaRejected` if ``path`` is not valid UTF-8.

    Linux file names are bytes; Python represents undecodable ones with surrogate escapes,
    which no database text column can store, so such files are refused with a clear reason.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise MediaRejected(f"{shown}: the file name is not valid UTF-8; rename the file") from None


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS
