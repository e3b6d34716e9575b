"""The ``poel-host`` console script: patch for gevent first, then run the CLI.

Nothing else may be imported before ``patch()``: psycopg must see gevent's ``select`` when
it is first imported, or it keeps a wait function that blocks the hub.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from poel_host.green import patch

    patch()
    from poel_host.cli import main as cli_main

    return cli_main(argv)
