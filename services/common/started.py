"""How a service tells the ``make run`` supervisor (:mod:`services.run`) where it listens.

The supervisor gives each service it starts ``LEDGER_RUN_STARTED_FILE``, a path in a private
directory of its own. Once the service listens, it writes the port it bound there (``{"port":
N}``; written whole, then renamed into place, so a reader never sees half of it). A
listen address with port 0 has the system pick a free port: the supervisor learns which
from this file, hands it to the services that need it (the situation room reads the ledger
and the notifier) and names every bound address in its ``run.started`` line. A port picked
free beforehand, closed and handed over could be taken by another process before the
service bound it. Started by anything else, the variable is unset and nothing is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

#: The variable naming the file; set only by the supervisor, for its own children.
STARTED_FILE_VARIABLE = "LEDGER_RUN_STARTED_FILE"


def announce_started(port: int, environ: Mapping[str, str] | None = None) -> None:
    """Write ``port`` to the file the supervisor named, if it named one."""
    target = (os.environ if environ is None else environ).get(STARTED_FILE_VARIABLE)
    if not target:
        return
    path = Path(target)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"port": port}), encoding="utf-8")
    partial.replace(path)


def read_started(path: Path) -> int | None:
    """The port a service wrote to ``path``, or None while it has written none."""
    try:
        port = json.loads(path.read_text(encoding="utf-8"))["port"]
    except FileNotFoundError:
        return None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{path} names no port: {port!r}")
    return port
