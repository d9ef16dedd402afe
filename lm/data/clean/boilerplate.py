"""Project Gutenberg header, footer and licence removal.

The text lies between a start marker and an end marker. Both have changed over the years:

    *** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***        (2000s)
    *** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***         (2010s on)
    *END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*   (1990s: ends the licence
                                                                 header, so the text follows)
    *** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***
    End of the Project Gutenberg EBook of Hamlet / End of Project Gutenberg's Hamlet
    End of this Project Gutenberg Etext of Hamlet

Files without markers (the shipped corpus was pre-stripped, its ``metadata.txt`` files are
catalogue records) still lose every paragraph that names Project Gutenberg or its site, so no
licence or catalogue text is left in any output document.
"""
from __future__ import annotations

import re

from lm.data.clean.stats import StageStats

_START = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THIS|THE) PROJECT GUTENBERG[^\n]*$"
    r"|^[^\n]*\*END\*?[ \t]*THE SMALL PRINT[^\n]*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(
    r"^[ \t]*\*{3}[ \t]*END OF (?:THIS|THE) PROJECT GUTENBERG[^\n]*$"
    r"|^[ \t]*End of (?:the |this )?Project Gutenberg[^\n]*$", re.IGNORECASE | re.MULTILINE)
# Credit lines that follow the start marker ("Produced by David Widger").
_CREDIT = re.compile(r"\s*(?:Produced by|This e-?text was prepared by|E-?text prepared by)"
                     r"[^\n]*(?:\n[^\n]+)*", re.IGNORECASE)
_MENTION = re.compile(r"project\s+gutenberg|gutenberg\.org|\bPG\s+eBook", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"((?:\r?\n)[ \t]*(?:\r?\n)+)")


def strip_boilerplate(text: str, stats: StageStats) -> str | None:
    """The text without Gutenberg header/footer/licence; None when nothing is left."""
    body = _cut_at_markers(text, stats)
    body = _drop_mentioning_paragraphs(body, stats)
    if not body.strip():
        stats.count("emptied")
        stats.record(text, None)
        return None
    stats.record(text, body)
    return body


def _cut_at_markers(text: str, stats: StageStats) -> str:
    starts = list(_START.finditer(text))
    begin = starts[-1].end() if starts else 0  # the last one: a licence may precede the marker
    end_match = _END.search(text, begin)
    end = end_match.start() if end_match else len(text)
    if starts:
        stats.count("start_marker")
        stats.add_example(text[:begin])
        credit = _CREDIT.match(text, begin, end)
        if credit:
            stats.count("credit_line")
            begin = credit.end()
    if end_match:
        stats.count("end_marker")
        stats.add_example(text[end:])
    return text[begin:end]


def _drop_mentioning_paragraphs(text: str, stats: StageStats) -> str:
    # Split keeping the separators so the kept text keeps its line endings byte for byte.
    pieces = _PARAGRAPH_BREAK.split(text)
    kept = []
    for i in range(0, len(pieces), 2):
        paragraph, separator = pieces[i], pieces[i + 1] if i + 1 < len(pieces) else ""
        if _MENTION.search(paragraph):
            stats.count("gutenberg_paragraph")
            stats.add_example(paragraph)
            continue
        kept.append(paragraph + separator)
    return "".join(kept)
