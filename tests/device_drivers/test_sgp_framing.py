"""device_drivers.framing: CRC, encoding and the receiving rules of SGP/1 section 3 (no port)."""

import pytest
from hypothesis import given, settings, strategies as st

from device_drivers.framing import (MAX_FRAME_BYTES, FrameDecoder, FrameEncodeError, crc16_ccitt_false,
                                    encode_frame, parse_frame)


def test_crc_check_value_and_spec_example():
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert encode_frame("$", ["1", "HELLO"]).raw == b"$1,HELLO*7613\r\n"


def test_encode_rejects_forbidden_characters_and_overlong_frames():
    for bad in ("A,B", "A*", "A$", "A#", "A!", "A\r", "A\n", "é"):
        with pytest.raises(FrameEncodeError):
            encode_frame("$", ["1", bad])
    with pytest.raises(FrameEncodeError):
        encode_frame("$", ["1", "X" * (MAX_FRAME_BYTES - 8)])
    ok = encode_frame("$", ["1", "X" * (MAX_FRAME_BYTES - 10)])  # "$1," + body + "*XXXX\r\n" = 160
    assert len(ok.raw) == MAX_FRAME_BYTES and parse_frame(ok.raw) == ok


def test_noise_before_start_is_discarded_and_frames_split_across_chunks():
    dec = FrameDecoder()
    wire = b"garbage\x00\xff" + b"#1,OK*" + b"%04X" % crc16_ccitt_false(b"1,OK") + b"\r\n"
    frames = []
    for i in range(len(wire)):  # byte by byte
        frames += dec.feed(wire[i:i + 1])
    assert [f.body for f in frames] == ["1,OK"]
    assert frames[0].start == "#"


def test_a_start_character_restarts_the_frame():
    dec = FrameDecoder()
    good = encode_frame("!", ["3", "WATCHDOG"]).raw
    frames = dec.feed(b"$12,STAT" + good)
    assert [f.body for f in frames] == ["3,WATCHDOG"]
    assert dec.discarded == 1


@pytest.mark.parametrize("raw", [
    b"$1,HELLO*7614\r\n",        # wrong CRC
    b"$1,HELLO*7613\n",          # no CR
    b"$1,HELLO7613\r\n",         # no '*'
    b"$1,HELLO*7a13\r\n",        # lower-case hex is not SGP/1
    b"$1,HE*LLO*7613\r\n",       # '*' in a field
])
def test_bad_frames_are_dropped_silently(raw):
    dec = FrameDecoder()
    assert dec.feed(raw) == []
    assert parse_frame(raw) is None


def test_overlong_frame_is_dropped_and_the_next_one_is_read():
    dec = FrameDecoder()
    body = b"1," + b"A" * 200
    long_frame = b"$" + body + b"*%04X\r\n" % crc16_ccitt_false(body)
    good = encode_frame("$", ["2", "PING"]).raw
    assert [f.body for f in dec.feed(long_frame + good)] == ["2,PING"]


@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_and_only_yield_crc_valid_frames(data):
    for frame in FrameDecoder().feed(data):
        assert parse_frame(frame.raw) == frame
        assert len(frame.raw) <= MAX_FRAME_BYTES


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=80), st.integers(1, 65535))
def test_a_valid_frame_survives_surrounding_noise(before, after, seq):
    good = encode_frame("#", [str(seq), "OK"])
    noise_before = before.replace(b"$", b"").replace(b"#", b"").replace(b"!", b"")
    frames = FrameDecoder().feed(noise_before + good.raw + after)
    assert frames[0] == good


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 200), st.integers(1, 255))
def test_any_single_byte_error_is_detected(pos, flip):
    raw = bytearray(encode_frame("$", ["6", "RELEASE"]).raw)
    pos %= len(raw)
    raw[pos] ^= flip
    assert all(f.body != "6,RELEASE" for f in FrameDecoder().feed(bytes(raw)))
