"""Terminal output to styled text segments: ANSI SGR colours kept, every other escape dropped.

The page never parses markup: it receives ``(text, style)`` segments and puts
the text into elements with ``textContent``, so output can hold anything
(``<script>``, escapes, invalid UTF-8) and is shown as text.

A :class:`TerminalDecoder` keeps state across chunks: the current style, a
multi-byte UTF-8 character or an escape sequence split between two chunks.
Styles are small dicts: ``fg``/``bg`` (a palette index 0-15 or ``#rrggbb``),
and the flags ``b`` (bold), ``d`` (dim), ``i`` (italic), ``u`` (underline),
``r`` (reverse), ``s`` (strike).
"""

from __future__ import annotations

import codecs
import re
from typing import Any

Style = dict[str, Any]
Segment = tuple[str, Style | None]

# CSI ... final byte; OSC ... BEL or ST; other two-byte escapes.
_ESCAPE = re.compile(
    r"\x1b\[([0-?]*)([ -/]*)([@-~])"  # CSI: params, intermediates, final
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC, ended by BEL or ST
    r"|\x1b[PX^_][^\x1b]*\x1b\\"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]"  # two-byte escapes (charset selection, ...)
)
# An escape that may continue in the next chunk (kept for later).
_PARTIAL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*|[PX^_][^\x1b]*|[ -/]*)?$")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FLAGS = {1: "b", 2: "d", 3: "i", 4: "u", 7: "r", 9: "s"}
_UNFLAGS = {22: ("b", "d"), 23: ("i",), 24: ("u",), 27: ("r",), 29: ("s",)}
MAX_PENDING = 256  # a longer unfinished escape is dropped


def xterm_colour(n: int) -> int | str:
    """The xterm 256-colour palette: 0-15 stay indexes (the page's theme), the rest RGB."""
    if n < 16:
        return n
    if n < 232:
        n -= 16
        levels = (0, 95, 135, 175, 215, 255)
        r, g, b = levels[n // 36], levels[(n // 6) % 6], levels[n % 6]
    else:
        r = g = b = 8 + (n - 232) * 10
    return f"#{r:02x}{g:02x}{b:02x}"


def _extended(params: list[int], i: int) -> tuple[int | str | None, int]:
    """``38;5;n`` / ``38;2;r;g;b`` starting at ``params[i]`` (the 5 or 2): colour, next index."""
    if i < len(params) and params[i] == 5 and i + 1 < len(params):
        n = params[i + 1]
        return (xterm_colour(n) if 0 <= n <= 255 else None), i + 2
    if i < len(params) and params[i] == 2 and i + 3 < len(params):
        r, g, b = (min(max(v, 0), 255) for v in params[i + 1 : i + 4])
        return f"#{r:02x}{g:02x}{b:02x}", i + 4
    return None, len(params)


def apply_sgr(style: Style, text: str) -> Style:
    """The style after an SGR sequence (``text`` is its parameter string)."""
    style = dict(style)
    params = [int(p) if p.isdigit() else 0 for p in text.replace(":", ";").split(";")] or [0]
    i = 0
    while i < len(params):
        p = params[i]
        i += 1
        if p == 0:
            style.clear()
        elif p in _FLAGS:
            style[_FLAGS[p]] = True
        elif p in _UNFLAGS:
            for flag in _UNFLAGS[p]:
                style.pop(flag, None)
        elif 30 <= p <= 37:
            style["fg"] = p - 30
        elif 90 <= p <= 97:
            style["fg"] = p - 90 + 8
        elif 40 <= p <= 47:
            style["bg"] = p - 40
        elif 100 <= p <= 107:
            style["bg"] = p - 100 + 8
        elif p == 39:
            style.pop("fg", None)
        elif p == 49:
            style.pop("bg", None)
        elif p in (38, 48):
            colour, i = _extended(params, i)
            if colour is not None:
                style["fg" if p == 38 else "bg"] = colour
    return style


class TerminalDecoder:
    """Bytes of one stream, chunk by chunk, to styled segments."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._style: Style = {}
        self._pending = ""
        self._cr = False

    def feed(self, data: bytes, final: bool = False) -> list[Segment]:
        """Decode ``data``; with ``final`` flush what an unfinished sequence held back."""
        text = self._pending + self._utf8.decode(data, final)
        self._pending = ""
        if not final:
            partial = _PARTIAL.search(text)
            if partial is not None:
                held = text[partial.start() :]
                text = text[: partial.start()]
                self._pending = held if len(held) <= MAX_PENDING else ""
        segments: list[Segment] = []
        pos = 0
        for match in _ESCAPE.finditer(text):
            self._emit(segments, text[pos : match.start()])
            if match.group(3) == "m" and not match.group(2):
                self._style = apply_sgr(self._style, match.group(1))
            pos = match.end()
        self._emit(segments, text[pos:])
        return segments

    def _emit(self, segments: list[Segment], text: str) -> None:
        if not text:
            return
        # \r\n is a newline; a lone \r (progress bars) starts a new line too.
        if self._cr and text.startswith("\n"):
            text = text[1:]
        self._cr = text.endswith("\r")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROLS.sub("", text.replace("\x1b", ""))
        if not text:
            return
        style = dict(self._style) or None
        if segments and segments[-1][1] == style:
            segments[-1] = (segments[-1][0] + text, style)
        else:
            segments.append((text, style))
