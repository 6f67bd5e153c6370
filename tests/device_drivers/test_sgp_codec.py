"""device_drivers.codec: requests, replies and events as values (no port)."""

import pytest
from hypothesis import given, settings, strategies as st

from device_drivers import codec
from device_drivers.errors import ProtocolError
from device_drivers.framing import Frame, FrameDecoder, encode_frame


def _frame(text: bytes) -> Frame:
    (f,) = FrameDecoder().feed(text)
    return f


def test_requests_encode_as_in_the_spec():
    assert codec.make_request(3, "SELECT", "C7").encode() == b"$3,SELECT,C7*19A6\r\n"
    assert codec.make_request(4, "RETRACT", codec.fmt_mm(4)).encode() == b"$4,RETRACT,4.0*9470\r\n"
    assert codec.make_request(6, "RELEASE").text == "6,RELEASE"


def test_request_validation():
    with pytest.raises(ValueError):
        codec.make_request(0, "PING")
    with pytest.raises(ValueError):
        codec.make_request(65536, "PING")
    with pytest.raises(ValueError):
        codec.make_request(1, "FIRE")
    with pytest.raises(ValueError):
        codec.check_hole("c7")


def test_fmt_mm_one_decimal():
    assert codec.fmt_mm(35) == "35.0"
    assert codec.fmt_mm(58.04) == "58.0"
    assert codec.fmt_mm(2.25) == "2.2" or codec.fmt_mm(2.25) == "2.3"
    assert codec.fmt_mm(-0.01) == "0.0"


def test_decode_replies_and_events():
    r = codec.decode(_frame(b"#6,OK,1,59,58.0,C7*7F92\r\n"))
    assert isinstance(r, codec.Reply) and r.ok and r.seq == 6
    assert codec.parse_release(r) == codec.ReleaseReport(1, 59, 58.0, "C7")
    er = codec.decode(encode_frame("#", ["9", "ER", "E_STATE", "SAFE"]))
    assert not er.ok and er.code == "E_STATE" and er.detail == "SAFE"
    ev = codec.decode(_frame(b"!1,DOCKED,C7,62.0*4685\r\n"))
    assert isinstance(ev, codec.Event) and (ev.eid, ev.name, ev.fields) == (1, "DOCKED", ("C7", "62.0"))
    assert codec.decode(encode_frame("$", ["1", "HELLO"])) is None  # a host ignores requests
    assert codec.decode(encode_frame("#", ["0", "OK"])) is None      # seq 0 does not exist
    assert codec.decode(encode_frame("#", ["x", "OK"])) is None


def test_parse_status_and_records():
    st_ = codec.parse_status(codec.decode(encode_frame("#", "7,OK,IDLE,C7,-,58.0,59,1".split(","))))
    assert st_ == codec.Status("IDLE", "C7", None, 58.0, 59, 1)
    rec = codec.parse_record(codec.decode(encode_frame("#", "8,OK,1,C7,58.0,1234".split(","))))
    assert rec == codec.ReleaseRecord(1, "C7", 58.0, 1234)
    cart = codec.parse_cartridge(codec.decode(encode_frame("#", "9,OK,CART1,6711,14.8,20261101,60".split(","))))
    assert cart.activity_mbq == 14.8 and cart.seeds_left == 60


@pytest.mark.parametrize("text", ["7,OK,IDLE,C7,-,58.0,59", "7,OK,BOGUS,C7,-,58.0,59,1", "7,OK,IDLE,c7,-,58.0,59,1",
                                  "7,OK,IDLE,C7,-,5e1,59,1", "7,OK,IDLE,C7,-,58.0,-1,1"])
def test_malformed_status_raises_protocol_error(text):
    with pytest.raises(ProtocolError):
        codec.parse_status(codec.decode(encode_frame("#", text.split(","))))


_field = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="$#!,*"),
                 max_size=12)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from("#!$"), st.lists(_field, min_size=1, max_size=8))
def test_decode_never_crashes_on_any_valid_frame(start, fields):
    try:
        frame = encode_frame(start, fields)
    except ValueError:
        return
    msg = codec.decode(frame)
    assert msg is None or isinstance(msg, (codec.Reply, codec.Event))
    if isinstance(msg, codec.Reply) and msg.ok:
        for parse in (codec.parse_status, codec.parse_release, codec.parse_record, codec.parse_hello,
                      codec.parse_cartridge, codec.parse_depth):
            try:
                parse(msg)
            except ProtocolError:
                pass


@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=400))
def test_host_parsing_of_arbitrary_bytes_never_yields_a_request(data):
    # the host side never turns received bytes into something it would send: no RELEASE can come of noise
    for frame in FrameDecoder().feed(data):
        assert not isinstance(codec.decode(frame), codec.Request)
