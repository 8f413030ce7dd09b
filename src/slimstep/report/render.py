"""The report's list of blocks (:mod:`slimstep.report.blocks`) as text: Markdown
(:func:`to_markdown`) and one self-contained HTML page (:func:`to_html`, its CSS
inline, badges coloured by flag)."""

from __future__ import annotations

import html

from slimstep.flags import FLAGS
from slimstep.report.tables import Cell, Group


def _md_cell(c) -> str:
    if isinstance(c, Cell):
        text = f"**{c.text}**" if c.bold and c.text else c.text
        return " ".join([text, *(f"`{b}`" for _, b in c.badges)]).strip()
    return c.replace("|", "\\|")


def to_markdown(blocks: list[tuple]) -> str:
    md = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            md += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            md += [blk[1], ""]
        elif kind == "verdict":
            md += [f"> **{blk[1]}** — " + " ".join(blk[2]), ""]
        elif kind in ("list", "flags"):
            md += [f"- {x}" for x in blk[1]] + [""]
        elif kind == "table":
            head, body = blk[1], blk[2]
            md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for row in body:
                cells = [f"**{row.label}**", *[""] * (len(head) - 1)] if isinstance(row, Group) else row
                md.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            md.append("")
        elif kind == "img":
            md += [f"![{blk[2]}]({blk[1]})", ""]
        elif kind == "gallery":
            pics = blk[1]
            for i in range(0, len(pics), 4):
                part = pics[i:i + 4]
                md += ["| " + " | ".join(c for _, c in part) + " |", "|" + "---|" * len(part),
                       "| " + " | ".join(f"![{c}]({p})" for p, c in part) + " |", ""]
    return "\n".join(md)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right;white-space:nowrap}th{background:#f3f3f3;white-space:normal}
td:first-child,th:first-child{text-align:left;white-space:normal}td:nth-child(2),th:nth-child(2){text-align:left}
tr.group td{background:#fafafa;font-weight:600;text-align:left;color:#555}
.verdict{border-left:4px solid #2a7;background:#f2fbf6;padding:.5em 1em;margin:.6em 0}
.verdict p{margin:.3em 0}.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;
background:#eee;color:#333;margin:1px 2px;white-space:nowrap}.badge.equals-init,.badge.failed,
.badge.diverged{background:#fde2e1;color:#a01010}.badge.below-floor,.badge.fewer-seeds,.badge.skipped
{background:#fff1cc;color:#7a5200}ul.flags li{margin:.3em 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{margin:0;text-align:center;font-size:12px}
.gallery img{width:220px;image-rendering:pixelated;border:1px solid #ddd}img.plot{max-width:100%}"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _badge_html(fid: str, text: str) -> str:
    return f"<span class='badge {html.escape(fid)}'>{html.escape(text)}</span>"


def _html_cell(c) -> str:
    if isinstance(c, Cell):
        text = f"<b>{html.escape(c.text)}</b>" if c.bold and c.text else html.escape(c.text)
        return f"<td>{text}{''.join(_badge_html(f, b) for f, b in c.badges)}</td>"
    return f"<td>{html.escape(c)}</td>"


def _flag_item(line: str) -> str:
    """A flag note ``[badge] text`` with its badge drawn as in the table."""
    badge, _, rest = line[1:].partition("] ")
    fid = next((k for k, (b, _) in FLAGS.items() if b == badge), "")
    return f"<li>{_badge_html(fid, badge)} {_inline(rest)}</li>"


def to_html(blocks: list[tuple]) -> str:
    e = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "slimstep report")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(blk[1])}</p>")
        elif kind == "verdict":
            parts.append(f"<div class='verdict' data-spec='{e(blk[1])}'><b>{e(blk[1])}</b>"
                         + "".join(f"<p>{_inline(x)}</p>" for x in blk[2]) + "</div>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in blk[1]) + "</ul>")
        elif kind == "flags":
            parts.append("<ul class='flags'>" + "".join(_flag_item(x) for x in blk[1]) + "</ul>")
        elif kind == "table":
            n = len(blk[1])
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>"
                         + "".join(f"<tr class='group'><td colspan='{n}'>{e(row.label)}</td></tr>"
                                   if isinstance(row, Group) else
                                   "<tr>" + "".join(_html_cell(c) for c in row) + "</tr>"
                                   for row in blk[2]) + "</table>")
        elif kind == "img":
            parts.append(f"<p><img class='plot' src='{e(blk[1])}' alt='{e(blk[2])}'></p>")
        elif kind == "gallery":
            parts.append("<div class='gallery'>" + "".join(
                f"<figure><img src='{e(p)}' alt='{e(c)}'><figcaption>{e(c)}</figcaption></figure>"
                for p, c in blk[1]) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
