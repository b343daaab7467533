"""MkDocs hook: the repository's README.md is the site's home page.

The README is written for GitHub, where it sits above ``docs/``: its links say
``docs/operations.md``. On the site the pages sit at the root, so those links lose the
``docs/`` prefix. One file, read by both, so the front page cannot drift from the site's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[2] / "README.md"
_DOCS_LINK = re.compile(r"\]\(docs/")


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == "index.md":
        return _DOCS_LINK.sub("](", markdown)
    return markdown
