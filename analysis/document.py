"""A tiny document model (headings, paragraphs, tables, images) and its three renderings.

The report is built once as a `Document`; plain text for the terminal, Markdown and HTML are
only ways of printing it, so the three never disagree.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Paragraph:
    text: str
    loud: bool = False  # a verdict or an alarm: bold / highlighted


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    # "l" or "r" per column; numbers read best right-aligned.
    align: tuple[str, ...] = ()

    def alignment(self, column: int) -> str:
        return self.align[column] if column < len(self.align) else "l"


@dataclass(frozen=True)
class Image:
    path: str  # relative to the document
    alt: str


Block = Union[Paragraph, Bullets, Table, Image]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)


# --- plain text ------------------------------------------------------------------------------


def to_text(doc: Document) -> str:
    out = [doc.title, "=" * len(doc.title)]
    for section in doc.sections:
        out += ["", section.title, "-" * len(section.title)]
        for block in section.blocks:
            out += _text_block(block)
    return "\n".join(out) + "\n"


def _text_block(block: Block) -> list[str]:
    if isinstance(block, Paragraph):
        return [f">>> {block.text}" if block.loud else block.text]
    if isinstance(block, Bullets):
        return [f"  ! {item}" for item in block.items]
    if isinstance(block, Image):
        return [f"[plot: {block.path}]"]
    widths = [
        max(len(cell) for cell in (header, *(row[i] for row in block.rows)))
        for i, header in enumerate(block.headers)
    ]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(w) if block.alignment(i) == "r" else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(block.headers), line(tuple("-" * w for w in widths))] + [
        line(row) for row in block.rows
    ]


# --- Markdown --------------------------------------------------------------------------------


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}"]
    for section in doc.sections:
        out += ["", f"## {section.title}", ""]
        for block in section.blocks:
            out += [*_markdown_block(block), ""]
    return "\n".join(out).rstrip() + "\n"


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Paragraph):
        return [f"**{_md(block.text)}**" if block.loud else _md(block.text)]
    if isinstance(block, Bullets):
        return [f"- {_md(item)}" for item in block.items]
    if isinstance(block, Image):
        return [f"![{_md(block.alt)}]({block.path})"]
    rule = tuple("---:" if block.alignment(i) == "r" else "---" for i in range(len(block.headers)))
    rows = (block.headers, rule, *block.rows)
    return ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


# --- HTML ------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; text-align: left; }
td.r { text-align: right; font-variant-numeric: tabular-nums; }
p.loud { font-weight: bold; padding: 0.6rem; background: #fff4d6; border-left: 4px solid #e0a000; }
li { margin: 0.2rem 0; }
img { max-width: 100%; }
"""


def to_html(doc: Document) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for section in doc.sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        out += [_html_block(block) for block in section.blocks]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        css = ' class="loud"' if block.loud else ""
        return f"<p{css}>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Image):
        return f'<p><img src="{html.escape(block.path)}" alt="{html.escape(block.alt)}"></p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{block.alignment(i)}">{html.escape(cell)}</td>'
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in block.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
