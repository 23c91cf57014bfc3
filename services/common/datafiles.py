"""The data directory and what the services keep in it, readable by their user only.

The embedded stores (the ledger's events, the notifier's webhooks and their secrets), the
credentials, the page-token secret and the signing key are nobody else's business: another
user of the machine must not read them. Directories the services create are 0700 and files
0600, whatever the umask; a data directory found open to others (made by an older version,
or by ``mkdir``) is closed at start, with a warning.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700; existing ones are left as
    they are (``mkdir -p`` would give the parents the umask's mode)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        # exist_ok: another service starting at the same moment may have created it.
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def close_data_dir(path: Path) -> None:
    """Take group and other access away from the data directory, if it exists."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return  # made private by whichever part first needs it
    if mode & 0o077:
        try:
            path.chmod(PRIVATE_DIR)
        except OSError as exc:  # not ours: say so, the service can still run
            log.warning("data_dir.open_to_others", path=str(path), mode=oct(mode), error=str(exc))
            return
        log.warning("data_dir.closed", path=str(path), mode_was=oct(mode), mode=oct(PRIVATE_DIR))


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it is missing; an existing one loses group
    and other access. The content is not touched."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)


def prepare_sqlite_file(dbname: str) -> None:
    """A SQLite database file (``SQLITE_DBNAME``) in a private directory, mode 0600.

    SQLite creates its ``-wal`` and ``-shm`` files with the database file's mode, so the
    store stays private; those of an older run are closed too. In-memory databases and URIs
    are left alone.
    """
    if not dbname or dbname == ":memory:" or dbname.startswith("file:"):
        return
    path = Path(dbname)
    make_private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            private_file(companion)


#: The errors of a file or directory the service's user may not use: a data directory
#: made by another user (or by root before the service ran as its own user), a key file
#: restored with the wrong owner or mode, a read-only volume.
ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


#: The errors of a file system with no room left: the disk, or the user's quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def logged_disk_full(service: str, exc: BaseException) -> bool:
    """Log, as one line (``{service}.disk_full``, with the path and what to do), a start that
    failed writing a file of the data directory (credentials, keys) on a full disk; False,
    logging nothing, for any other failure. It was a traceback."""
    if not isinstance(exc, OSError) or exc.errno not in FULL_ERRNOS:
        return False
    path = str(exc.filename) if exc.filename else None
    structlog.get_logger(f"services.{service}").error(
        f"{service}.disk_full",
        path=path,
        error=exc.strerror or str(exc),
        hint="the file system of the data directory (LEDGER_DATA_DIR) is full: free space on "
        "it, then start again",
    )
    return True


def logged_access_failure(service: str, exc: BaseException) -> bool:
    """Log, as one line (``{service}.file_not_accessible``, with the path, what failed and
    what to check), a start that failed on a file or directory the service's user may not
    read or write; False, logging nothing, for any other failure.

    Before, such a start ended in a traceback (exit 1), where an unreadable secret file
    named by a setting is one ``config_error`` line (exit 2): the same mistake, said two
    ways."""
    if not isinstance(exc, OSError) or exc.errno not in ACCESS_ERRNOS or not exc.filename:
        return False
    path = str(exc.filename)
    structlog.get_logger(f"services.{service}").error(
        f"{service}.file_not_accessible",
        path=path,
        error=exc.strerror or str(exc),
        uid=os.geteuid(),
        hint=f"the service's user (uid {os.geteuid()}) must own {path} and the directories "
        "above it, or be allowed to read and write them (chown, chmod 700 for a directory, "
        "600 for a file); a read-only volume must be mounted writable",
    )
    return True
