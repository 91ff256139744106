"""Knowledge-base text as a plain-text email can quote it: sections of clean sentences.

A retrieved passage is the raw text of a document chunk: Markdown (`# headings`, `**bold**`,
lists, links), text extracted from HTML or PDF (headings as bare short lines), sometimes an
HTML tag or entity left over. A reply quotes sentences, never headings, so headings are
kept apart as what each section is about and the sentences lose every mark-up character.
Pure: no I/O.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_MD_HEADING = re.compile(r"^\s{0,3}(?:#{1,6}\s+(.*?)\s*#*|<h[1-6][^<>]*>(.*?)</h[1-6]>)\s*$", re.I)
_RULE = re.compile(r"^\s*(?:={2,}|-{2,}|\*{3,}|_{3,})\s*$")  # a setext underline or a horizontal rule
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_QUOTE_MARKER = re.compile(r"^\s*>\s?")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<(https?://[^<>\s]+|[^<>\s@]+@[^<>\s]+)>")
_EMPHASIS = (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), re.compile(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])"))
_CODE = re.compile(r"`+([^`]*)`+")
_STRIKE = re.compile(r"~~(.+?)~~")
_SPACES = re.compile(r"\s+")
# A sentence ends at . ! ? followed by a space and a capital, a digit or an opening mark;
# not after the usual abbreviations ("e.g. a receipt").
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"\u201d\u2019)]?\s+(?=[A-Z0-9\"\u201c\u2018(])")
_ABBREVIATION = re.compile(r"\b(?:e\.g|i\.e|etc|approx|incl|no|nr|vs|mr|mrs|ms|dr|st)\.$", re.I)
_TERMINAL = ".!?:;,"


@dataclass(frozen=True, slots=True)
class Section:
    """Sentences under one heading (empty when the text starts before any heading)."""

    heading: str
    sentences: tuple[str, ...]


def inline(text: str) -> str:
    """One line of text without Markdown or HTML mark-up: links become their text."""
    text = _COMMENT.sub(" ", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    text = _STRIKE.sub(r"\1", text)
    for emphasis in _EMPHASIS:
        text = emphasis.sub(r"\2", text)
    return _SPACES.sub(" ", html.unescape(text)).strip()


def sections(text: str) -> list[Section]:
    """The passage's sections, each with its heading and its sentences, all plain text."""
    out: list[Section] = []
    heading = ""
    paragraphs: list[list[str]] = [[]]

    def close() -> None:
        sentences = tuple(s for p in paragraphs if p for s in split_sentences(" ".join(p)))
        if sentences:
            out.append(Section(heading, sentences))

    lines = _COMMENT.sub("\n", text).splitlines()
    headed = -2  # the line of the last heading
    for i, raw in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        line = raw.strip()
        markdown_heading = _MD_HEADING.match(raw)
        if _RULE.match(raw):
            continue
        setext = bool(line) and _RULE.match(following) is not None and following.strip()[0] in "=-"
        if markdown_heading or setext or _bare_heading(line, lines[i - 1] if i else "", headed == i - 1):
            close()
            headed = i
            heading = inline(next(g for g in markdown_heading.groups() if g is not None) if markdown_heading else line)
            paragraphs = [[]]
            continue
        if not line:
            paragraphs.append([])
        elif _LIST_MARKER.match(line):  # a list item is a unit of its own, even without a full stop
            paragraphs.append([_LIST_MARKER.sub("", line)])
            paragraphs.append([])
        else:
            paragraphs[-1].append(_QUOTE_MARKER.sub("", line))
    close()
    return out


def _bare_heading(line: str, previous: str, after_heading: bool) -> bool:
    # Text from HTML and PDF keeps headings as short lines of their own: no closing
    # punctuation, after a blank line or a finished sentence.
    if not line or len(line) > 70 or len(line.split()) > 9 or line[-1] in _TERMINAL or not line[0].isupper():
        return False
    if _LIST_MARKER.match(line) or _TAG.fullmatch(line):
        return False
    previous = previous.strip()
    return after_heading or not previous or previous[-1] in ".!?:"


def split_sentences(text: str) -> list[str]:
    flat = inline(text)
    if not flat:
        return []
    out: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(flat):
        if _ABBREVIATION.search(flat[start:match.start()]):
            continue
        out.append(flat[start:match.end()].strip())
        start = match.end()
    out.append(flat[start:].strip())
    return [s for s in out if s]


def without_leading(title: str, sentence: str) -> str:
    """The sentence without the title in front of it (text extraction glues a heading to
    the first sentence), so that no answer opens by repeating what the document is called."""
    if title and sentence.lower().startswith(title.lower()) and len(sentence) > len(title):
        rest = sentence[len(title):].lstrip(" :.-\u2013\u2014")
        if rest[:1].isupper():
            return rest
    return sentence
