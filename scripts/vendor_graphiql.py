"""Regenerate the vendored GraphiQL assets from ``node_modules``.

Run from the repository root::

    npm ci && npm run vendor-graphiql

(``npm run vendor-graphiql`` runs ``uv run python scripts/vendor_graphiql.py``.)

The list of files comes from the GraphiQL page of the installed Strawberry, so
the vendored copies always match what that page loads. For every file the page
takes from the CDN, the script checks that ``package.json`` pins the same
version, that ``node_modules`` holds it, and that the file's SHA-384 equals the
page's ``integrity`` attribute, i.e. that it is byte for byte the file
Strawberry vetted. Only then does it rebuild ``noteburst/api/static/graphiql``
from scratch: ``<package>@<version>/<file>`` plus the package's LICENSE for
each file, and the page's inline favicon as ``favicon.svg``.

After a Strawberry upgrade that changes versions, the script says which
``npm install --save-exact ...`` to run first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from strawberry.http.ides import get_graphql_ide_html

from noteburst.api.graphiql import FAVICON, STATIC_DIR, CdnAsset, find_cdn_assets

__all__ = ["main"]

REPO: Final = Path(__file__).resolve().parents[1]
NODE_MODULES: Final = REPO / "node_modules"

# Packages shipping no LICENSE file: the package whose LICENSE covers them.
# @graphiql/plugin-explorer comes from the graphql/graphiql monorepo (see its
# package.json "repository"), whose MIT LICENSE graphiql ships.
LICENSE_FROM: Final = {"@graphiql/plugin-explorer": "graphiql"}

# Third-party packages compiled into a vendored file, whose licence ships too
# (as LICENSE.<name>).
BUNDLED: Final = {"@graphiql/plugin-explorer": ("graphiql-explorer",)}

_LICENSE_NAMES: Final = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "license")
_FAVICON_RE: Final = re.compile(r"""rel="icon"\s+href="data:image/svg\+xml,([^"]*)\"""")


def main() -> int:
    """Check the pinned npm packages and rebuild the vendored asset folder.

    Returns
    -------
    int
        The process exit status: 0 on success, 1 if a check failed (the
        asset folder is then left untouched).
    """
    html = get_graphql_ide_html(graphql_ide="graphiql")
    assets = find_cdn_assets(html)
    pins: dict[str, str] = json.loads((REPO / "package.json").read_text())[
        "dependencies"
    ]
    errors = [*_check_versions(assets, pins), *_check_files(assets)]
    favicon = _FAVICON_RE.search(html)
    if favicon is None:
        errors.append("Strawberry's GraphiQL page has no inline SVG favicon.")
    if errors:
        print("Nothing vendored:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    assert favicon is not None

    if STATIC_DIR.exists():
        shutil.rmtree(STATIC_DIR)
    STATIC_DIR.mkdir(parents=True)
    for asset in assets:
        _copy(NODE_MODULES / asset.package / asset.file, asset.vendored_path)
    for package, version in sorted({(a.package, a.version) for a in assets}):
        _copy(_license(package), f"{package}@{version}/LICENSE")
        for name in BUNDLED.get(package, ()):
            bundled = _resolve(name, parent=package)
            _copy(_license(name, bundled), f"{package}@{version}/LICENSE.{name}")
    svg = " ".join(re.sub(r"<!--.*?-->", "", unquote(favicon[1]), flags=re.S).split())
    (STATIC_DIR / FAVICON).write_text(svg.replace("> <", "><") + "\n")

    files = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
    for path in files:
        print(f"{path.stat().st_size:>10,}  {path.relative_to(REPO)}")
    total = sum(p.stat().st_size for p in files)
    print(f"{total:>10,}  total, {len(files)} files")
    unused = sorted(set(pins) - {a.package for a in assets})
    if unused:
        print("Pinned in package.json but not loaded by the page:", *unused)
    return 0


def _check_versions(assets: list[CdnAsset], pins: dict[str, str]) -> list[str]:
    errors = []
    for package, version in sorted({(a.package, a.version) for a in assets}):
        if pins.get(package) != version:
            errors.append(
                f"The page loads {package}@{version} but package.json pins "
                f"{pins.get(package)}: run `npm install --save-exact "
                f"--omit-lockfile-registry-resolved {package}@{version}`."
            )
            continue
        manifest = NODE_MODULES / package / "package.json"
        installed = (
            json.loads(manifest.read_text())["version"] if manifest.exists() else None
        )
        if installed != version:
            errors.append(
                f"node_modules has {package} {installed}, not {version}: run `npm ci`."
            )
    return errors


def _check_files(assets: list[CdnAsset]) -> list[str]:
    errors = []
    for asset in assets:
        source = NODE_MODULES / asset.package / asset.file
        if not source.is_file():
            errors.append(f"{source} is missing: run `npm ci`.")
            continue
        digest = hashlib.sha384(source.read_bytes()).digest()
        integrity = "sha384-" + base64.b64encode(digest).decode("ascii")
        if asset.integrity is not None and integrity != asset.integrity:
            errors.append(
                f"{source} is {integrity}, but the page expects {asset.integrity}."
            )
    return errors


def _resolve(name: str, *, parent: str) -> Path:
    """Find package ``name`` as Node would from inside package ``parent``."""
    nested = NODE_MODULES / parent / "node_modules" / name
    return nested if nested.is_dir() else NODE_MODULES / name


def _license(package: str, directory: Path | None = None) -> Path:
    directory = directory or NODE_MODULES / package
    for name in _LICENSE_NAMES:
        if (directory / name).is_file():
            return directory / name
    if package in LICENSE_FROM:
        return _license(LICENSE_FROM[package])
    msg = f"{directory} has no LICENSE file; add it to LICENSE_FROM."
    raise FileNotFoundError(msg)


def _copy(source: Path, relative: str) -> None:
    target = STATIC_DIR / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


if __name__ == "__main__":
    sys.exit(main())
