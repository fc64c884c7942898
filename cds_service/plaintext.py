"""Card text for a terminal: CDS Hooks ``detail`` is GitHub-flavoured Markdown, which a terminal shows raw.

``priorauth-cds evaluate`` prints cards for a person reading a terminal or a log, where ``**I.A.7**`` is noise.
This keeps the words and the structure (paragraphs, bullets, numbered items) and drops only the markup. It
covers what ``cards.py`` writes (emphasis, bullets, links, code spans, headings), not all of Markdown; anything
it does not recognise passes through unchanged, so no text is ever lost.
"""

from __future__ import annotations

import re

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)[^)]*\)")
_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])|(?<![\w_])_(?=\S)([^_]+?)(?<=\S)_(?![\w_])")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


#: An escaped character while the markup rules run (private-use brackets around its index), so that escaped
#: text such as ``\*\*not bold\*\*`` or ``\[not a link\]`` in a clinician's answer stays literal.
_HIDDEN = re.compile("\ue000(\\d+)\ue001")


def _inline(text: str) -> str:
    """Emphasis, code spans, links (``text (url)``) and backslash escapes, within one line."""
    escaped: list[str] = []

    def hide(match: re.Match[str]) -> str:
        escaped.append(match.group(1))
        return f"\ue000{len(escaped) - 1}\ue001"

    text = _ESCAPE.sub(hide, text)
    text = _LINK.sub(lambda m: m.group(1) if m.group(1) == m.group(2) else f"{m.group(1)} ({m.group(2)})", text)
    text = _CODE.sub(r"\1", text)
    text = _STRONG.sub(r"\2", text)
    text = _EMPHASIS.sub(lambda m: m.group(1) or m.group(2), text)
    return _HIDDEN.sub(lambda m: escaped[int(m.group(1))], text)


def markdown_to_text(markdown: str) -> str:
    """Plain text with the same lines: headings lose their ``#``, bullets stay ``- `` bullets, emphasis goes."""
    lines = []
    for line in markdown.splitlines():
        heading = _HEADING.match(line)
        if heading:
            lines.append(_inline(heading.group(1)))
            continue
        bullet = _BULLET.match(line)
        if bullet:
            line = f"{bullet.group(1)}- {line[bullet.end() :]}"
        lines.append(_inline(line))
    return "\n".join(lines)
