"""Incremental detokenization and stop strings (server side, no engine)."""

from flowprefill.server.outputs import TextStream


class CharTokenizer:
    """Token id = one byte; decoding invalid UTF-8 yields U+FFFD like real tokenizers."""

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def feed(stream: TextStream, text: str) -> list[str]:
    out = []
    for b in text.encode():
        out.append(stream.add(b))
        if stream.stopped:
            break
    return out


def test_text_is_sent_incrementally_and_completely():
    s = TextStream(CharTokenizer(), [])
    pieces = feed(s, "héllo wörld")
    pieces.append(s.flush())
    assert "".join(pieces) == "héllo wörld"
    assert "\ufffd" not in "".join(pieces)  # half a UTF-8 character is never sent


def test_stop_string_truncates_and_is_never_half_sent():
    s = TextStream(CharTokenizer(), ["END"])
    pieces = feed(s, "abc ENXD more END tail")
    assert s.stopped
    assert "".join(pieces) == "abc ENXD more "
    assert all("E" not in p or "ENXD" in "".join(pieces) for p in pieces)
    assert s.flush() == ""


def test_stop_held_back_prefix_released_when_not_a_stop():
    s = TextStream(CharTokenizer(), ["STOP"])
    assert feed(s, "ST") == ["", ""]  # could still become STOP
    assert s.add(ord("x")) == "STx"
