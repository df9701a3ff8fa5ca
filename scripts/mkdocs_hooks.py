"""MkDocs hooks (mkdocs.yml): the README is the site's home page and CONTRIBUTING.md its contributing
page, read from the repository's root so each text lives in one place. Their links point into
docs/ from the root; on the site they are pages beside one another."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

PAGES = {"README.md": "index.md", "CONTRIBUTING.md": "contributing.md"}


def site_links(text: str) -> str:
    """Links as the root's files write them (docs/x.md, CONTRIBUTING.md) as the site's pages see them."""
    def link(match: re.Match) -> str:
        target = match.group(2)
        if not re.match(r"[a-z]+:", target):
            target = PAGES.get(target, target.removeprefix("docs/"))
        return f"{match.group(1)}({target})"
    return re.sub(r"(\]\s?)\(([^)\s]+)\)", link, text)


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for source, page in PAGES.items():
        files.append(File.generated(config, page, content=site_links((root / source).read_text(encoding="utf-8"))))
    return files
