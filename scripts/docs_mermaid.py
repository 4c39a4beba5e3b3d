"""Mermaid for the docs site, carried by the site itself (the site fetches nothing online).

Run as a script (``python scripts/docs_mermaid.py``, the docs step of scripts/test-all does)
it fetches the pinned ``mermaid`` package through the machine's own npm configuration and
keeps its browser bundle in ``build/mermaid/`` (git-ignored). Loaded by mkdocs as a hook
(``hooks:`` in mkdocs.yml) it puts that bundle and its licence into the site, where
``extra_javascript`` loads it: Material then renders each ``mermaid`` fence with it instead
of loading mermaid from a CDN.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

#: bump deliberately: the diagrams are checked against this version
VERSION = "11.17.2"
DIST = Path(__file__).resolve().parent.parent / "build" / "mermaid"
#: bundle member -> where it goes in the site (mkdocs.yml's extra_javascript names the first)
FILES = {
    "package/dist/mermaid.min.js": "javascripts/vendor/mermaid.min.js",
    "package/LICENSE": "javascripts/vendor/mermaid.LICENSE.txt",
}


def fetched() -> bool:
    stamp = DIST / "VERSION"
    return stamp.is_file() and stamp.read_text().strip() == VERSION


def fetch() -> None:
    """Fetch the pinned release once; nothing to do when it is already there."""
    if fetched():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is needed to fetch mermaid for the docs (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"mermaid@{VERSION}", "--silent", "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with tarfile.open(next(Path(tmp).glob("mermaid-*.tgz"))) as tar:
            DIST.mkdir(parents=True, exist_ok=True)
            for member in FILES:
                source = tar.extractfile(member)
                if source is None:
                    sys.exit(f"mermaid@{VERSION}: {member} is missing from the package")
                (DIST / Path(member).name).write_bytes(source.read())
    (DIST / "VERSION").write_text(VERSION + "\n")
    print(f"mermaid {VERSION} fetched into {DIST}")


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the fetched bundle to the site's files."""
    from mkdocs.exceptions import PluginError  # noqa: PLC0415 (only under mkdocs)
    from mkdocs.structure.files import File  # noqa: PLC0415

    if not fetched():
        raise PluginError(
            f"mermaid {VERSION} is not in {DIST}: run `python scripts/docs_mermaid.py` "
            "first (the diagrams would show as text)"
        )
    for member, uri in FILES.items():
        files.append(File.generated(config, uri, abs_src_path=str(DIST / Path(member).name)))
    return files


if __name__ == "__main__":
    fetch()
