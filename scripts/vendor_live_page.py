"""Copy the live page's browser libraries from ``node_modules`` into the package.

Run from the repository root::

    npm ci && npm run vendor-live-page

The execution page (:mod:`noteburst.api.live`) loads three npm libraries,
listed with their exact versions and SHA-384 digests in
:data:`noteburst.api.live.VENDORED`.  For each, this script checks that
``package.json`` pins that version, that ``node_modules`` holds it, and that
the file's digest is the listed one; only then does it rebuild
``noteburst/api/static/live/vendor`` from scratch: ``<package>@<version>/<file>``
and the package's LICENSE beside it.  After ``npm install --save-exact`` of a
new version, update the entry in ``VENDORED`` (the script prints the digest
it found) and run it again.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Final

from noteburst.api.live import VENDOR_DIR, VENDORED, subresource_integrity

__all__ = ["main"]

REPO: Final = Path(__file__).resolve().parents[1]
NODE_MODULES: Final = REPO / "node_modules"
_LICENSE_NAMES: Final = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE")


def main() -> int:
    """Check the pinned npm packages and rebuild the vendored folder.

    Returns
    -------
    int
        0 on success; 1 if a check failed (the folder is then untouched).
    """
    pins: dict[str, str] = json.loads((REPO / "package.json").read_text())[
        "dependencies"
    ]
    errors = []
    for asset in VENDORED:
        if pins.get(asset.package) != asset.version:
            errors.append(
                f"VENDORED lists {asset.package}@{asset.version} but package.json "
                f"pins {pins.get(asset.package)}: run `npm install --save-exact "
                f"{asset.package}@{asset.version}`, or update VENDORED."
            )
            continue
        source = NODE_MODULES / asset.package / asset.file
        if not source.is_file():
            errors.append(f"{source} is missing: run `npm ci`.")
            continue
        installed = json.loads(
            (NODE_MODULES / asset.package / "package.json").read_text()
        )
        if installed["version"] != asset.version:
            errors.append(f"node_modules has {asset.package} {installed['version']}.")
        found = subresource_integrity(source)
        if found != asset.integrity:
            errors.append(f"{source} is {found}, but VENDORED says {asset.integrity}.")
        if _license(asset.package) is None:
            errors.append(f"{asset.package} ships no LICENSE file.")
    if errors:
        print("Nothing vendored:", *errors, sep="\n  ", file=sys.stderr)
        return 1

    if VENDOR_DIR.exists():
        shutil.rmtree(VENDOR_DIR)
    for asset in VENDORED:
        target = VENDOR_DIR / asset.vendored_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NODE_MODULES / asset.package / asset.file, target)
        license_file = _license(asset.package)
        assert license_file is not None
        shutil.copyfile(license_file, VENDOR_DIR / asset.license_path)
    for path in sorted(p for p in VENDOR_DIR.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size:>10,}  {path.relative_to(REPO)}")
    return 0


def _license(package: str) -> Path | None:
    for name in _LICENSE_NAMES:
        if (NODE_MODULES / package / name).is_file():
            return NODE_MODULES / package / name
    return None


if __name__ == "__main__":
    sys.exit(main())
