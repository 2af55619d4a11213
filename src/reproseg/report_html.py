"""Markdown tables (the ones the workflow writes) as standalone HTML for Snakemake's report.

Only what the project's own Markdown uses: '#' headings, pipe tables, paragraphs.
"""
from __future__ import annotations

import html

from .io_atomic import write_text

_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:1em}table{border-collapse:collapse;margin:.6em 0}"
          "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child"
          "{text-align:left}th{background:#eee}")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str, title: str = "") -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body>"]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in _cells(line)) + "</tr>")
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append("</table>")
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def markdown_file_to_html(md_path: str, html_path: str) -> None:
    with open(md_path) as f:
        write_text(html_path, markdown_to_html(f.read(), title=md_path))
