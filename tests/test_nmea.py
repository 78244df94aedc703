"""NMEA decoding: framing that survives a real serial line, and fixes as
gpsd reports them (TPV names and units, one per reporting cycle)."""

from __future__ import annotations

from functools import reduce

import pytest

from gatewayd.nmea import NmeaDecoder

KNOTS = 1852 / 3600


def s(body: str) -> bytes:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


def cycle(t: str, date: str = "031126", lat: str = "4846.80000", ns: str = "N",
          lon: str = "00910.80000", ew: str = "E", status: str = "A",
          quality: str = "1") -> bytes:
    return (
        s(f"GNRMC,{t},{status},{lat},{ns},{lon},{ew},10.0,123.4,{date},2.5,W,A")
        + s("GNVTG,123.4,T,,M,10.0,N,18.5,K,A")
        + s(f"GNGGA,{t},{lat},{ns},{lon},{ew},{quality},12,0.8,250.5,M,47.9,M,,")
        + s("GNGSA,A,3,01,02,03,04,,,,,,,,,1.5,0.8,1.2,1")
    )


def decode(data: bytes) -> tuple[list, NmeaDecoder]:
    d = NmeaDecoder()
    fixes = d.feed(data) + d.flush()
    return fixes, d


def test_a_full_cycle_becomes_one_fix_with_gpsd_names_and_units():
    fixes, _ = decode(cycle("120000.00") + cycle("120001.00"))
    assert len(fixes) == 2
    tpv = fixes[0].to_tpv()
    assert tpv["class"] == "TPV" and tpv["mode"] == 3
    assert tpv["time"] == "2026-11-03T12:00:00.000Z"
    assert tpv["lat"] == pytest.approx(48 + 46.8 / 60, abs=1e-9)
    assert tpv["lon"] == pytest.approx(9 + 10.8 / 60, abs=1e-9)
    assert tpv["speed"] == pytest.approx(10.0 * KNOTS, abs=1e-3)
    assert tpv["track"] == pytest.approx(123.4)
    assert tpv["magvar"] == pytest.approx(-2.5)
    assert tpv["altMSL"] == pytest.approx(250.5)
    assert tpv["altHAE"] == pytest.approx(250.5 + 47.9)
    assert fixes[1].to_tpv()["time"] == "2026-11-03T12:00:01.000Z"


def test_southern_and_western_hemispheres_are_negative():
    fixes, _ = decode(cycle("120000.00", lat="3352.12000", ns="S", lon="15112.60000", ew="W"))
    assert fixes[0].lat == pytest.approx(-(33 + 52.12 / 60), abs=1e-9)
    assert fixes[0].lon == pytest.approx(-(151 + 12.6 / 60), abs=1e-9)


def test_fields_the_receiver_did_not_give_are_absent_not_zero():
    data = s("GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,,M,,M,,") + \
        s("GPRMC,120000.00,A,4846.80000,N,00910.80000,E,,,031126,,,A")
    tpv = decode(data)[0][0].to_tpv()
    assert tpv["mode"] == 2
    for absent in ("altMSL", "altHAE", "speed", "track", "magvar", "climb", "epx", "eph"):
        assert absent not in tpv


def test_no_fix_reports_mode_1_without_a_position():
    fixes, _ = decode(cycle("120000.00", status="V", quality="0"))
    tpv = fixes[0].to_tpv()
    assert tpv["mode"] == 1 and "lat" not in tpv and "lon" not in tpv
    assert tpv["time"] == "2026-11-03T12:00:00.000Z"


def test_the_sentence_that_ends_a_cycle_is_learned_from_the_time_change():
    d = NmeaDecoder()
    first = d.feed(cycle("120000.00"))
    assert first == []  # nothing is known yet about where a cycle ends
    # The time change closes the first cycle and names its last sentence (GSA,
    # untimed, as gpsd counts it) the cycle ender; the second cycle is then
    # reported as soon as its own GSA arrives, without waiting for the next.
    second = d.feed(cycle("120001.00"))
    assert d.cycle_enders == {"GSA"}
    assert [f.time for f in second] == ["2026-11-03T12:00:00.000Z", "2026-11-03T12:00:01.000Z"]
    without_ender = cycle("120002.00")[: -len(s("GNGSA,A,3,01,02,03,04,,,,,,,,,1.5,0.8,1.2,1"))]
    assert d.feed(without_ender) == []
    assert [f.time for f in d.flush()] == ["2026-11-03T12:00:02.000Z"]


def test_sentences_within_10_ms_belong_to_one_cycle():
    data = s("GPRMC,120000.000,A,4846.80000,N,00910.80000,E,1.0,10.0,031126,,,A") + \
        s("GPGGA,120000.005,4846.80000,N,00910.80000,E,1,08,1.0,100.0,M,47.0,M,,") + \
        s("GPRMC,120000.500,A,4846.80000,N,00910.80000,E,1.0,10.0,031126,,,A")
    fixes, _ = decode(data)
    assert len(fixes) == 2 and fixes[0].altMSL == 100.0 and fixes[1].altMSL is None


def test_midnight_rolls_the_date_over_before_rmc_says_so():
    data = cycle("235959.00", date="311226") + \
        s("GNGGA,000000.00,4846.80000,N,00910.80000,E,1,12,0.8,250.5,M,47.9,M,,")
    fixes, _ = decode(data)
    assert fixes[-1].time == "2027-01-01T00:00:00.000Z"


def test_garbage_binary_and_bad_checksums_are_dropped_and_counted():
    good = cycle("120000.00")
    corrupted = bytearray(s("GNGGA,120001.00,4846.80000,N,00910.80000,E,1,12,0.8,9.9,M,,M,,"))
    corrupted[20] ^= 0x01
    data = b"\x00\xff\xfe junk $$$ \x07" + good + bytes(corrupted) + b"\xb5\x62\x01\x07binary"
    fixes, d = decode(data)
    st = d.stats()
    assert st.bad_checksum == 1
    assert st.garbage_bytes > 10
    assert len(fixes) == 1 and fixes[0].altMSL == 250.5


def test_feeding_byte_by_byte_gives_the_same_fixes_as_all_at_once():
    data = b"".join(cycle(f"1200{i:02d}.00") for i in range(10))
    whole, _ = decode(data)
    d = NmeaDecoder()
    pieces = [f for i in range(len(data)) for f in d.feed(data[i:i + 1])] + d.flush()
    assert pieces == whole and len(whole) == 10


def test_glued_sentences_and_missing_or_extra_line_ends_still_decode():
    glued = cycle("120000.00").replace(b"\r\n", b"") + b"\n\n\r\r" + \
        cycle("120001.00").replace(b"\r\n", b"\n")
    fixes, d = decode(glued)
    assert len(fixes) == 2 and d.stats().bad_checksum == 0 and d.stats().truncated == 0


def test_a_truncated_sentence_is_dropped_and_the_next_one_read():
    full = s("GNGGA,120000.00,4846.80000,N,00910.80000,E,1,12,0.8,250.5,M,47.9,M,,")
    data = full[:30] + cycle("120001.00")
    fixes, d = decode(data)
    assert d.stats().truncated == 1 and len(fixes) == 1


def test_sentences_up_to_130_bytes_are_accepted_and_longer_ones_dropped():
    pad = "0" * (131 - len("$GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,10.0,M,,M,,*hh"))
    body = f"GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,10.{pad},M,,M,,"
    at_limit = s(body)
    assert len(at_limit.strip()) == 130
    fixes, d = decode(at_limit)
    assert d.stats().too_long == 0 and fixes[0].altMSL == pytest.approx(10.0)
    fixes, d = decode(s(body + "0"))
    assert d.stats().too_long == 1 and fixes == []


def test_every_supported_talker_is_read_and_unknown_ones_skipped():
    for talker in ("GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "GQ"):
        body = f"{talker}GGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,5.0,M,,M,,"
        fixes, _ = decode(s(body))
        assert fixes[0].altMSL == 5.0, talker
    fixes, d = decode(s("IIGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,5.0,M,,M,,") +
                      s("PUBX,00,120000.00,4846.8,N") + s("GPXYZ,1,2,3"))
    assert fixes == [] and d.stats().skipped_unknown == 2 and d.stats().skipped_proprietary == 1


def test_gbs_gives_error_estimates_and_gll_gns_zda_give_position_and_date():
    data = s("GPZDA,120000.00,03,11,2026,00,00") + \
        s("GNGNS,120000.00,4846.80000,N,00910.80000,E,AAN,10,0.9,300.0,48.0,,,V") + \
        s("GPGBS,120000.00,1.5,2.5,3.5,,,,")
    tpv = decode(data)[0][0].to_tpv()
    assert tpv["time"] == "2026-11-03T12:00:00.000Z"
    assert tpv["mode"] == 3 and tpv["altHAE"] == pytest.approx(348.0)
    assert (tpv["epy"], tpv["epx"], tpv["epv"]) == (1.5, 2.5, 3.5)
    gll = s("GPGLL,4846.80000,N,00910.80000,E,120000.00,A,A") + \
        s("GPRMC,120000.00,A,4846.8,N,00910.8,E,,,031126,,,A")
    fix = decode(gll)[0][0]
    assert fix.mode == 2 and fix.lat == pytest.approx(48.78)


def test_climb_comes_from_the_height_change_between_3d_fixes():
    a = cycle("120000.00")
    b = cycle("120001.00").replace(b"250.5,M", b"252.5,M")
    b = b"".join(s(line[1:line.index(b"*")].decode()) for line in b.splitlines(keepends=False))
    fixes, _ = decode(a + b)
    assert fixes[1].climb == pytest.approx(2.0)
    assert fixes[0].climb is None


@pytest.mark.parametrize("junk", [b"$" * 5000, b"$GPGGA," + b"9" * 10_000, bytes(range(256)) * 50,
                                  b"\r\n" * 1000, b"$GPGGA,,,,,,,,,,,,,,*56\r\n" * 10])
def test_hostile_input_never_raises_and_memory_stays_bounded(junk):
    d = NmeaDecoder()
    for i in range(0, len(junk), 97):
        d.feed(junk[i:i + 97])
        assert len(d._pending) <= 200
    d.flush()


def test_fixes_in_columns_are_the_fixes_one_by_one():
    data = b"".join(cycle(f"1200{i:02d}.00") for i in range(5)) + \
        s("GPGBS,120005.00,1.5,2.5,3.5,,,,")
    d = NmeaDecoder()
    block = d.feed_block(data)
    rest = d.flush_block()
    fixes, _ = decode(data)
    assert len(block) + len(rest) == len(fixes) == 6
    assert [{"class": "TPV", **f} for f in block.fields() + rest.fields()] == \
        [f.to_tpv() for f in fixes]
    assert block.to_list() + rest.to_list() == fixes
    lonlat = block.lonlat()
    assert lonlat[0].tolist() == [fixes[0].lon, fixes[0].lat]
    assert isinstance(block.fields()[0]["mode"], int)


def test_values_are_rounded_as_python_rounds_them():
    # 0.0005 m/s steps of speed land on ties and near-ties of round(x, 3).
    for knots in ("0.0009718", "0.0029155", "10.0", "1.2345678", "0.25"):
        body = f"GPRMC,120000.00,A,4846.8000050,N,00910.80000,E,{knots},123.45675,031126,,,A"
        fix = decode(s(body))[0][0]
        assert fix.speed == round(float(knots) * KNOTS, 3)
        assert fix.track == round(123.45675, 4)
        assert fix.lat == round(48 + 46.800005 / 60.0, 9)


def test_a_number_json_cannot_say_is_absent_and_bad_numbers_make_the_sentence_malformed():
    fixes, d = decode(s("GPRMC,120000.00,A,4846.8,N,00910.8,E,1.0,10.0,031126,nan,W,A") +
                      s("GPGGA,120000.00,4846.8,N,00910.8,E,1,08,1.0,1_0.5,M,x,M,,"))
    assert fixes[0].magvar is None
    assert fixes[0].altMSL is None and d.stats().malformed == 1
