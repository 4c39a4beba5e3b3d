"""The docs site draws its diagrams, offline: each ``mermaid`` fence in docs/ comes out of
``mkdocs build`` as a ``class="mermaid"`` block (which Material renders), and every page
with one loads mermaid from the site itself, never from the internet.

The build needs the mermaid bundle that ``python scripts/docs_mermaid.py`` fetches (the
docs step of scripts/test-all runs it first); without it the build fails saying so.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^```mermaid\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_BLOCK = re.compile(r'<pre class="mermaid"><code>(.*?)</code></pre>', re.DOTALL)
_SCRIPT = re.compile(r'<script\b[^>]*\bsrc="([^"]+)"')
_STYLESHEET = re.compile(r'<link\b[^>]*\brel="stylesheet"[^>]*\bhref="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _page(site: Path, source: Path) -> Path:
    """Where mkdocs writes a page (directory URLs: a.md -> a/index.html)."""
    rel = source.relative_to(DOCS).with_suffix("")
    if rel.name == "index":
        return site / rel.parent / "index.html"
    return site / rel / "index.html"


def _fences() -> dict[Path, list[str]]:
    found = {}
    for source in sorted(DOCS.rglob("*.md")):
        fences = _FENCE.findall(source.read_text())
        if fences:
            found[source] = fences
    return found


def _external(url: str) -> bool:
    return re.match(r"^(https?:)?//", url) is not None


def test_the_diagrams_this_test_guards_exist() -> None:
    pages = {p.relative_to(DOCS).as_posix() for p in _fences()}
    assert {"concepts.md", "architecture.md"} <= pages, pages


@pytest.mark.parametrize("source", sorted(_fences()), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_each_fence_is_a_mermaid_block(site: Path, source: Path) -> None:
    fences = _fences()[source]
    blocks = [html.unescape(b) for b in _BLOCK.findall(_page(site, source).read_text())]
    assert len(blocks) == len(fences), f"{len(fences)} fences, {len(blocks)} mermaid blocks"
    for fence, block in zip(fences, blocks, strict=True):
        assert block.strip() == fence.strip()


@pytest.mark.parametrize("source", sorted(_fences()), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_the_page_loads_mermaid_from_the_site(site: Path, source: Path) -> None:
    page = _page(site, source)
    scripts = _SCRIPT.findall(page.read_text())
    mermaid = [s for s in scripts if "mermaid" in s]
    assert mermaid, f"no mermaid script on {page}: {scripts}"
    for src in mermaid:
        assert not _external(src), f"mermaid from the internet: {src}"
        bundle = (page.parent / src).resolve()
        assert bundle.is_relative_to(site.resolve()), src
        # The real browser bundle, which defines the global Material looks for.
        assert bundle.stat().st_size > 1_000_000, bundle
        assert 'globalThis["mermaid"]' in bundle.read_text()[-2000:]


def test_no_page_loads_anything_from_the_internet(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        text = page.read_text()
        for url in _SCRIPT.findall(text) + _STYLESHEET.findall(text):
            assert not _external(url), f"{page.relative_to(site)} loads {url}"
