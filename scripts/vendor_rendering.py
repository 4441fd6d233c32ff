"""Regenerate the scripts inlined into rendered notebooks, from ``node_modules``.

Run from the repository root::

    npm ci && npm run vendor-rendering

`noteburst.domain.rendering` inlines require.js and MathJax into an executed
notebook's HTML when the notebook needs them, so the page loads nothing from
a CDN.  This script copies, for each of `noteburst.domain.rendering.SCRIPTS`,
the file from the npm package that ``package.json`` pins exactly (checking
that ``node_modules`` holds that version) into
``noteburst/domain/static/rendering/<package>@<version>/<file>``, with the
package's LICENSE.  The requirejs package ships no LICENSE file: its
``require.js`` header states the license (MIT) and its holders, so the script
writes that header and the MIT text.  ``tests/domain/rendering_test.py``
checks the vendored bytes against ``node_modules``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Final

from noteburst.domain.rendering import ASSETS_DIR, SCRIPTS

__all__ = ["main"]

REPO: Final = Path(__file__).resolve().parents[1]
MIT: Final = """\
Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
"""


def main() -> int:
    """Rebuild ``ASSETS_DIR``; return the exit status."""
    pins = json.loads((REPO / "package.json").read_text())["dependencies"]
    for script in SCRIPTS:
        installed = REPO / "node_modules" / script.package
        version = json.loads((installed / "package.json").read_text())["version"]
        if pins.get(script.package) != script.version or version != script.version:
            print(
                f"{script.package}: rendering.py wants {script.version}, package.json "
                f"pins {pins.get(script.package)}, node_modules has {version}; run "
                f"`npm install --save-exact {script.package}@{script.version}`",
                file=sys.stderr,
            )
            return 1
    shutil.rmtree(ASSETS_DIR, ignore_errors=True)
    for script in SCRIPTS:
        installed = REPO / "node_modules" / script.package
        target = ASSETS_DIR / f"{script.package}@{script.version}"
        (target / script.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(installed / script.file, target / script.file)
        license_file = installed / "LICENSE"
        if license_file.is_file():
            shutil.copyfile(license_file, target / "LICENSE")
        else:
            header = re.match(
                r"/\*\*.*?\*/", (installed / script.file).read_text(), re.S
            )
            if header is None or "MIT" not in header.group():
                print(f"{script.package}: no LICENSE found", file=sys.stderr)
                return 1
            notice = f"From the header of {script.file}:\n\n{header.group()}\n\n"
            (target / "LICENSE").write_text(notice + MIT)
        print(f"vendored {script.package}@{script.version}/{script.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
