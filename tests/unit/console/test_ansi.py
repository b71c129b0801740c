"""Terminal output to styled segments: SGR kept, other escapes dropped, split input."""

from __future__ import annotations

from execbus.console.ansi import TerminalDecoder, apply_sgr, xterm_colour


def decode(*chunks: bytes) -> list[tuple[str, object]]:
    decoder = TerminalDecoder()
    out: list[tuple[str, object]] = []
    for i, chunk in enumerate(chunks):
        for text, style in decoder.feed(chunk, final=i == len(chunks) - 1):
            if out and out[-1][1] == style:  # chunk boundaries do not matter
                text = out.pop()[0] + text
            out.append((text, style))
    return out


def test_basic_colours_and_reset() -> None:
    assert decode(b"\x1b[1;31mred\x1b[0m plain") == [
        ("red", {"b": True, "fg": 1}),
        (" plain", None),
    ]


def test_bright_256_and_truecolour() -> None:
    assert apply_sgr({}, "92") == {"fg": 10}
    assert apply_sgr({}, "104") == {"bg": 12}
    assert apply_sgr({}, "38;5;196") == {"fg": "#ff0000"}
    assert apply_sgr({}, "48;2;1;2;300") == {"bg": "#0102ff"}
    assert apply_sgr({"fg": 1, "b": True}, "39;22") == {}
    assert xterm_colour(7) == 7 and xterm_colour(232) == "#080808"


def test_sequences_split_across_chunks() -> None:
    assert decode(b"a\x1b[3", b"2mgreen\xe2\x82", b"\xac") == [
        ("a", None),
        ("green€", {"fg": 2}),
    ]


def test_other_escapes_and_controls_are_dropped() -> None:
    text = b"\x1b]0;title\x07\x1b[2J\x1b[Hhome\x07\x08 \x1b(Bdone"
    assert decode(text) == [("home done", None)]


def test_markup_stays_text() -> None:
    assert decode(b"<script>alert(1)</script>") == [("<script>alert(1)</script>", None)]


def test_carriage_returns() -> None:
    assert decode(b"a\r\nb\r", b"\nc\rd") == [("a\nb\nc\nd", None)]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"\xff\xfeok") == [("\ufffd\ufffdok", None)]


def test_an_unfinished_escape_never_grows_without_bound() -> None:
    decoder = TerminalDecoder()
    assert decoder.feed(b"\x1b]" + b"x" * 1000) == []
    assert decoder.feed(b"after") == [("after", None)]
