"""MkDocs hook: publish the repository files that the docs link to from outside docs/ (README.md,
experiments/results/*.md, figures under benchmarks/results and experiments/results).

The pages keep their repository-relative links (`../experiments/results/x.png`), so they also work when read on a
code host. MkDocs only knows files under docs_dir and would report those links as broken; this hook adds each
linked file (and, for Markdown files, what they link to in turn) under `repo/<path in the repository>` and rewrites
the links to point there. A link to a file that does not exist is left alone, so `mkdocs build --strict` still
reports it.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from mkdocs.structure.files import File, Files

PREFIX = "repo"
# Inline Markdown links and images: ](target) or ](target "title"). Reference-style links are not used in docs/.
_LINK = re.compile(r"\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")
_abs_to_uri: dict[str, str] = {}


def _repo_root(config) -> str:
    return os.path.dirname(os.path.abspath(config.config_file_path))


def _target(abs_src: str, url: str) -> Optional[str]:
    """The absolute path a relative link points at, or None for external, absolute and anchor-only links."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) or url.startswith(("/", "#")):
        return None
    path = url.split("#", 1)[0].split("?", 1)[0]
    return os.path.normpath(os.path.join(os.path.dirname(abs_src), path)) if path else None


def on_files(files: Files, config) -> Files:
    root, docs_dir = _repo_root(config), os.path.abspath(config.docs_dir)
    _abs_to_uri.clear()
    queue = []
    for f in files:
        if f.abs_src_path is None:  # generated in memory by a plugin: nothing on disk links to it
            continue
        _abs_to_uri[os.path.abspath(f.abs_src_path)] = f.src_uri
        if f.is_documentation_page():
            queue.append(os.path.abspath(f.abs_src_path))
    while queue:  # breadth-first over Markdown files, so linked results pages bring their own figures
        with open(queue.pop(), encoding="utf-8") as fh:
            text = fh.read()
        for url, _ in _LINK.findall(text):
            target = _target(fh.name, url)
            if (target is None or target in _abs_to_uri or not os.path.isfile(target)
                    or os.path.commonpath([target, root]) != root
                    or os.path.commonpath([target, docs_dir]) == docs_dir):
                continue
            src_uri = f"{PREFIX}/{os.path.relpath(target, root).replace(os.sep, '/')}"
            files.append(File.generated(config, src_uri, abs_src_path=target))
            _abs_to_uri[target] = src_uri
            if target.endswith(".md"):
                queue.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    if page.file.abs_src_path is None:
        return markdown
    abs_src = os.path.abspath(page.file.abs_src_path)

    def rewrite(m: re.Match) -> str:
        url, title = m.group(1), m.group(2)
        target = _target(abs_src, url)
        uri = _abs_to_uri.get(target) if target else None
        if uri is None:
            return m.group(0)
        anchor = url[len(url.split("#", 1)[0]):]
        rel = os.path.relpath(uri, os.path.dirname(page.file.src_uri) or ".").replace(os.sep, "/")
        return f"]({rel}{anchor}{title})"

    return _LINK.sub(rewrite, markdown)
