"""Write the GraphQL SDL to ``schema.graphql`` (or stdout with ``-``).

Run ``uv run python -m noteburst.api.export_schema`` after changing the
schema; ``tests/api/schema_test.py`` fails while the checked-in file is
stale.  Strawberry's own export CLI is not used: its ``cli`` extra pins an
older websockets than the one Noteburst needs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .schema import schema

__all__ = ["main", "sdl"]


def sdl() -> str:
    """Return the schema's SDL as written to ``schema.graphql``."""
    return schema.as_str() + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the SDL to the path given (default ``schema.graphql``)."""
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else "schema.graphql"
    if target == "-":
        sys.stdout.write(sdl())
    else:
        Path(target).write_text(sdl(), encoding="utf-8")


if __name__ == "__main__":
    main()
