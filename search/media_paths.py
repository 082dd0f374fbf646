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
    ``roots``; relative paths are taken relative to the first root. ``~`` is not expanded: paths
    come from API clients and the catalog, not from a shell.

    Raises:
        PathNotAllowed: the resolved path escapes every root (``../../etc/passwd``, a symlink
            pointing outside, an absolute path elsewhere), or it cannot be a path at all (a NUL
            byte, a symlink loop).
    """
    if not roots:
        raise PathNotAllowed("no media roots are configured (VIDSEEK_MEDIA_ROOTS)")
    if "\x00" in str(path):
        raise PathNotAllowed("the path contains a NUL byte")
    raw = Path(path)
    candidate = raw if raw.is_absolute() else roots[0] / raw
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a component too long
        raise PathNotAllowed(f"{str(path)[:200]} cannot be resolved: {exc}") from None
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathNotAllowed(f"{str(path)[:200]} is outside the media roots ({', '.join(str(r) for r in roots)})")


def is_regular_file(path: Path) -> bool:
    """``path.is_file()``, but False instead of an error for names the OS refuses (too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def is_directory(path: Path) -> bool:
    """``path.is_dir()``, but False instead of an error for names the OS refuses (too long)."""
    try:
        return path.is_dir()
    except OSError:
        return False


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


def remove_empty_folders(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and then its parents while they are empty, up to (not including) ``stop``."""
    stop = stop.resolve()
    folder = folder.resolve()
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone, or not ours to remove)
            return
        folder = folder.parent


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS
