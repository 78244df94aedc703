"""NMEA decoding: framing that survives a real serial line, and fixes as
gpsd reports them (TPV names and units, gpsd's reporting cycle).

The expected values here follow from the sentences by gpsd's rules, worked
by hand; tests/test_nmea_gpsd.py holds the same decoder against a running
gpsd on whole captures."""

from __future__ import annotations

import json
from functools import reduce

import pytest

from gatewayd.nmea import NmeaDecoder

KNOTS = 1852 / 3600


def s(body: str) -> bytes:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


GSA = "GNGSA,A,3,01,02,03,04,,,,,,,,,1.5,0.8,1.2,1"


def cycle(t: str, date: str = "031126", lat: str = "4846.80000", ns: str = "N",
          lon: str = "00910.80000", ew: str = "E", status: str = "A",
          quality: str = "1", alt: str = "250.5") -> bytes:
    return (
        s(f"GNRMC,{t},{status},{lat},{ns},{lon},{ew},10.0,123.4,{date},2.5,W,A")
        + s("GNVTG,123.4,T,,M,10.0,N,18.5,K,A")
        + s(f"GNGGA,{t},{lat},{ns},{lon},{ew},{quality},12,0.8,{alt},M,47.9,M,,")
        + s(GSA)
    )


def decode(data: bytes) -> tuple[list, NmeaDecoder]:
    d = NmeaDecoder()
    fixes = d.feed(data) + d.flush()
    return fixes, d


def last_of_each_time(fixes: list) -> list:
    """The last fix reported for each time: what the cycle came to."""
    out: dict = {}
    for fix in fixes:
        out[fix.time] = fix
    return list(out.values())


def test_fixes_carry_gpsd_tpv_names_and_units():
    fixes, _ = decode(cycle("120000.00") + cycle("120001.00"))
    tpv = fixes[-1].to_tpv()
    assert tpv["class"] == "TPV" and tpv["mode"] == 3
    assert tpv["time"] == "2026-11-03T12:00:01.000Z"
    assert tpv["lat"] == pytest.approx(48 + 46.8 / 60, abs=1e-9)
    assert tpv["lon"] == pytest.approx(9 + 10.8 / 60, abs=1e-9)
    assert tpv["speed"] == pytest.approx(10.0 * KNOTS, abs=1e-3)
    assert tpv["track"] == pytest.approx(123.4)
    assert tpv["magvar"] == pytest.approx(-2.5)
    assert tpv["altMSL"] == pytest.approx(250.5)
    assert tpv["altHAE"] == pytest.approx(250.5 + 47.9)
    assert tpv["geoidSep"] == pytest.approx(47.9)
    assert tpv["climb"] == 0.0  # the same height a second apart
    # gpsd's error model: DOP times its user equivalent range error (95 %)
    assert tpv["eph"] == pytest.approx(0.8 * 19.0)  # HDOP, 19 m
    assert tpv["epv"] == pytest.approx(1.2 * 23.0)  # VDOP, 23 m
    assert "epx" not in tpv and "epy" not in tpv  # no satellites in view to derive them from


def test_until_the_end_of_a_cycle_is_known_every_position_or_mode_is_reported():
    d = NmeaDecoder()
    first = d.feed(cycle("120000.00"))
    # RMC (a position), GGA (a position) and the first GNGSA (a mode); VTG
    # gives neither and is not reported.
    assert [f.mode for f in first] == [2, 3, 3]
    assert first[0].altMSL is None and first[1].altMSL == 250.5
    assert first[1].epv is None and first[2].epv == pytest.approx(27.6)
    assert d.cycle_enders == frozenset()


def test_the_timed_sentence_last_before_a_time_change_ends_the_cycle():
    d = NmeaDecoder()
    d.feed(cycle("120000.00"))
    # The time change at the next RMC names GGA, the last sentence with a
    # time (GSA has none), the cycle's end; from then on one fix a cycle, at
    # its GGA, and what follows GGA in a cycle is not reported.
    second = d.feed(cycle("120001.00"))
    assert d.cycle_enders == {"GGA"}
    assert [f.time for f in second] == ["2026-11-03T12:00:01.000Z"]
    without_gga = s("GNRMC,120002.00,A,4846.8,N,00910.8,E,10.0,123.4,031126,2.5,W,A") + s(GSA)
    assert d.feed(without_gga) == [] and d.flush() == []
    # A cycle without its end makes the sentence last before the next time
    # change an end too: RMC now reports as well, before GGA has come.
    third = d.feed(cycle("120003.00"))
    assert d.cycle_enders == {"GGA", "RMC"}
    assert [(f.time, f.altMSL) for f in third] == [
        ("2026-11-03T12:00:03.000Z", None), ("2026-11-03T12:00:03.000Z", 250.5)]


def test_sentences_within_10_ms_belong_to_one_cycle():
    data = s("GPRMC,120000.000,A,4846.80000,N,00910.80000,E,1.0,10.0,031126,,,A") + \
        s("GPGGA,120000.005,4846.80000,N,00910.80000,E,1,08,1.0,100.0,M,47.0,M,,") + \
        s("GPRMC,120000.500,A,4846.80000,N,00910.80000,E,1.0,10.0,031126,,,A") + \
        s("GPGGA,120000.505,4846.80000,N,00910.80000,E,1,08,1.0,101.0,M,47.0,M,,")
    fixes, d = decode(data)
    assert d.cycle_enders == {"GGA"}
    # RMC at .000 and GGA at .005 are one cycle, so RMC at .500 names GGA its end.
    assert [(f.time, f.altMSL) for f in fixes] == [
        ("2026-11-03T12:00:00.000Z", None), ("2026-11-03T12:00:00.005Z", 100.0),
        ("2026-11-03T12:00:00.505Z", 101.0)]


def test_midnight_rolls_the_date_over_before_a_dated_sentence_says_so():
    data = s("GPZDA,235959.00,31,12,2026,00,00") + \
        s("GPGGA,235959.00,4846.80000,N,00910.80000,E,1,12,0.8,250.5,M,47.9,M,,") + \
        s("GPGGA,000000.00,4846.80000,N,00910.80000,E,1,12,0.8,250.5,M,47.9,M,,")
    fixes, _ = decode(data)
    assert [f.time for f in last_of_each_time(fixes)] == [
        "2026-12-31T23:59:59.000Z", "2027-01-01T00:00:00.000Z"]


def test_garbage_binary_and_bad_checksums_are_dropped_and_counted():
    good = cycle("120000.00") + cycle("120001.00")
    corrupted = bytearray(s("GNGGA,120001.00,4846.80000,N,00910.80000,E,1,12,0.8,9.9,M,,M,,"))
    corrupted[20] ^= 0x01
    data = b"\x00\xff\xfe junk $$$ \x07" + good + bytes(corrupted) + b"\xb5\x62\x01\x07binary"
    fixes, d = decode(data)
    st = d.stats()
    assert st.bad_checksum == 1
    assert st.garbage_bytes > 10
    assert [f.to_tpv() for f in fixes] == [f.to_tpv() for f in decode(good)[0]]


def test_feeding_byte_by_byte_gives_the_same_fixes_as_all_at_once():
    data = b"".join(cycle(f"1200{i:02d}.00") for i in range(10))
    whole, _ = decode(data)
    d = NmeaDecoder()
    pieces = [f for i in range(len(data)) for f in d.feed(data[i:i + 1])] + d.flush()
    assert pieces == whole and len(whole) == 3 + 9


def test_glued_sentences_and_missing_or_extra_line_ends_still_decode():
    clean = cycle("120000.00") + cycle("120001.00")
    glued = cycle("120000.00").replace(b"\r\n", b"") + b"\n\n\r\r" + \
        cycle("120001.00").replace(b"\r\n", b"\n")
    fixes, d = decode(glued)
    assert d.stats().bad_checksum == 0 and d.stats().truncated == 0
    assert [f.to_tpv() for f in fixes] == [f.to_tpv() for f in decode(clean)[0]]


def test_a_truncated_sentence_is_dropped_and_the_next_one_read():
    full = s("GNGGA,120000.00,4846.80000,N,00910.80000,E,1,12,0.8,250.5,M,47.9,M,,")
    data = full[:30] + cycle("120001.00")
    fixes, d = decode(data)
    assert d.stats().truncated == 1
    assert [f.to_tpv() for f in fixes] == [f.to_tpv() for f in decode(cycle("120001.00"))[0]]


def test_sentences_up_to_130_bytes_are_accepted_and_longer_ones_dropped():
    pad = "0" * (131 - len("$GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,10.0,M,,M,,*hh"))
    body = f"GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,10.{pad},M,,M,,"
    at_limit = s(body)
    assert len(at_limit.strip()) == 130
    fixes, d = decode(at_limit)
    assert d.stats().too_long == 0 and fixes[0].altMSL == pytest.approx(10.0)
    fixes, d = decode(s(body + "0"))
    assert d.stats().too_long == 1 and fixes == []


def test_a_sentence_at_the_scan_limit_is_judged_alike_wherever_the_block_ends():
    # 130 bytes and 9 trailing blanks: the scan stops right before its CR,
    # where a block may end too; the blanks go, and the sentence counts.
    pad = "0" * (131 - len("$GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,10.0,M,,M,,*hh"))
    padded = s(f"GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,10.{pad},M,,M,,")
    padded = padded[:-2] + b" " * 9 + b"\r\n"
    # and one of 139 bytes, too long, closed by a lone LF
    too_long = b"$GPTXT," + b"x" * 132 + b"\n"
    for data in (padded, too_long):
        cut = len(data.rstrip(b"\r\n"))
        whole, d1 = decode(data)
        d2 = NmeaDecoder()
        pieces = d2.feed(data[:cut]) + d2.feed(data[cut:]) + d2.flush()
        assert pieces == whole and d2.stats() == d1.stats()
        assert d1.stats().garbage_bytes == 0
    assert d1.stats().too_long == 1
    fixes, d = decode(padded)
    assert d.stats().too_long == 0 and fixes[0].altMSL == pytest.approx(10.0)


def test_every_supported_talker_is_read_and_others_skipped():
    for talker in ("GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "GQ"):
        body = f"{talker}GGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,5.0,M,,M,,"
        fixes, _ = decode(s(body))
        assert fixes[0].altMSL == 5.0, talker
    fixes, d = decode(s("IIGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,5.0,M,,M,,") +
                      s("PUBX,00,120000.00,4846.8,N") + s("GPXYZ,1,2,3"))
    assert fixes == [] and d.stats().skipped_unknown == 2 and d.stats().skipped_proprietary == 1


def test_gbs_gives_error_estimates_and_gll_gns_zda_give_position_and_date():
    data = s("GPZDA,120000.00,03,11,2026,00,00") + \
        s("GNGNS,120000.00,4846.80000,N,00910.80000,E,AAN,10,0.9,300.0,48.0,,,S") + \
        s("GPGBS,120000.00,1.5,2.5,3.5,,,,")
    tpv = decode(data)[0][-1].to_tpv()
    assert tpv["time"] == "2026-11-03T12:00:00.000Z"
    assert tpv["mode"] == 3 and tpv["altHAE"] == pytest.approx(348.0)
    # GBS is no position or mode, so before the cycle's end is known it is
    # not reported itself; its estimates are not in the GNS fix.
    assert "epy" not in tpv
    two = data + s("GPZDA,120001.00,03,11,2026,00,00") + \
        s("GNGNS,120001.00,4846.80000,N,00910.80000,E,AAN,10,0.9,300.0,48.0,,,S") + \
        s("GPGBS,120001.00,1.5,2.5,3.5,,,,")
    fixes, d = decode(two)
    assert d.cycle_enders == {"GBS"}
    tpv = fixes[-1].to_tpv()
    assert (tpv["epy"], tpv["epx"], tpv["epv"]) == (1.5, 2.5, 3.5)
    gll = s("GPRMC,120000.00,A,4846.8,N,00910.8,E,,,031126,,,A") + \
        s("GPGLL,4846.80000,N,00910.80000,E,120000.00,A,A")
    fix = decode(gll)[0][-1]
    assert fix.mode == 2 and fix.lat == pytest.approx(48.78)


def test_climb_and_speed_come_from_successive_fixes_when_the_receiver_gives_none():
    def gga(t: str, lat: str, alt: str) -> bytes:
        return s(f"GPGGA,{t},{lat},N,00910.80000,E,1,08,1.0,{alt},M,47.0,M,,")

    data = s("GPZDA,120000.00,03,11,2026,00,00") + gga("120000.00", "4846.80000", "250.5") + \
        gga("120001.00", "4846.81000", "252.5") + gga("120002.00", "4846.82000", "252.0")
    fixes = last_of_each_time(decode(data)[0])
    assert fixes[0].climb is None and fixes[0].speed is None
    assert fixes[1].climb == pytest.approx(2.0) and fixes[2].climb == pytest.approx(-0.5)
    # 0.01 minute of latitude in a second, on the WGS84 ellipsoid at 48.8 N
    assert fixes[1].speed == pytest.approx(18.53, abs=0.01)


def test_altitude_above_the_ellipsoid_and_magnetic_variation_come_from_gpsd_models():
    fix = decode(s("GPGGA,120000.00,4846.80000,N,00910.80000,E,1,08,1.0,250.5,M,,M,,"))[0][0]
    # EGM2008 near Stuttgart is about 48 m (gpsd's 5-degree grid makes it 46),
    # the declination about 3 degrees east
    assert fix.geoidSep == pytest.approx(47, abs=2)
    assert fix.altHAE == pytest.approx(250.5 + fix.geoidSep, abs=1e-3)
    assert fix.magvar == pytest.approx(3, abs=1.5)


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
        s("GPGGA,120005.00,4846.8,N,00910.8,E,1,08,1.0,1.5,M,,M,,")
    d = NmeaDecoder()
    block = d.feed_block(data)
    rest = d.flush_block()
    fixes, _ = decode(data)
    assert len(block) + len(rest) == len(fixes) == 3 + 5
    assert [{"class": "TPV", **f} for f in block.fields() + rest.fields()] == \
        [f.to_tpv() for f in fixes]
    assert block.to_list() + rest.to_list() == fixes
    lonlat = block.lonlat()
    assert lonlat[0].tolist() == [fixes[0].lon, fixes[0].lat]
    assert isinstance(block.fields()[0]["mode"], int)


def test_fields_read_straight_from_c_are_the_fixes_of_the_block():
    # More fixes in one feed than one call into C writes (1024), and than the
    # decoder keeps room to write the members of: the runs are read in order.
    data = b"".join(cycle(f"00{m:02d}{sec:02d}.00") for m in range(20)
                    for sec in range(60))[:-200]
    fixes, _ = decode(data)
    d = NmeaDecoder()
    got = d.feed_fields(data) + d.flush_fields()
    assert len(got) == len(fixes) > 1100
    assert [{"class": "TPV", **f} for f, _ in got] == [f.to_tpv() for f in fixes]
    for fields, members in got:
        assert members == json.dumps(fields, separators=(",", ":"))[1:-1]
    # A cycle at a time, as MQTT brings them: the same fixes as one block,
    # less what the last cycle still holds.
    d = NmeaDecoder()
    few = d.feed_fields(cycle("120000.00")) + d.feed_fields(cycle("120001.00"))
    assert [{"class": "TPV", **f} for f, _ in few] == \
        [f.to_tpv() for f in decode(cycle("120000.00") + cycle("120001.00")[:-1])[0]]
    assert len(few) >= 2
    assert d.feed_fields(b"") == [] and NmeaDecoder().flush_fields() == []


@pytest.mark.parametrize("capacity", [1, 3, 16])
def test_a_decoder_with_room_for_few_fixes_a_call_gives_the_fixes_of_the_default_one(capacity):
    # Room for a few fixes (an MQTT source's decoder): a block of many cycles
    # takes many calls into C, and gives what the default decoder gives.
    data = b"".join(cycle(f"0100{sec:02d}.00") for sec in range(60))[:-200]
    fixes, _ = decode(data)
    small = NmeaDecoder(capacity)
    got = small.feed_fields(data) + small.flush_fields()
    assert len(got) == len(fixes) > 60
    assert [{"class": "TPV", **f} for f, _ in got] == [f.to_tpv() for f in fixes]
    d = NmeaDecoder(capacity)
    assert d.feed(data) + d.flush() == fixes


def test_values_are_rounded_to_gpsd_json_precision():
    # 0.0005 m/s steps of speed land on ties and near-ties of %.3f.
    for knots in ("0.0009718", "0.0029155", "10.0", "1.2345678", "0.25"):
        body = f"GPRMC,120000.00,A,4846.8000050,N,00910.80000,E,{knots},123.45675,031126,,,A"
        fix = decode(s(body))[0][0]
        assert fix.speed == float(f"{float(knots) * KNOTS:.3f}")
        assert fix.track == float(f"{123.45675:.4f}")
        assert fix.lat == float(f"{(4846 - 48 * 40 + 0.8000050) * (1 / 60):.9f}")


def test_huge_values_are_reported_whole_as_gpsd_reports_them():
    for alt in (1e300, -1e300, 2.0**52 + 1, 123456789012.5):
        fixes, _ = decode(s(f"GPGGA,120000.00,4846.8,N,00910.8,E,1,08,1.0,{alt!r},M,,M,,"))
        assert fixes[-1].altMSL == round(alt, 4) == alt


def test_numbers_are_read_as_gpsd_reads_them():
    # gpsd reads the digits a field starts with: "10.5x" is 10.5, and a field
    # that starts with no digit is no number.
    fixes, d = decode(s("GPRMC,120000.00,A,4846.8,N,00910.8,E,1.0,10.0,031126,nan,W,A") +
                      s("GPGGA,120000.00,4846.8,N,00910.8,E,1,08,1.0,10.5x,M,x,M,,"))
    assert fixes[-1].altMSL == 10.5 and d.stats().malformed == 0
    assert fixes[0].magvar == pytest.approx(2.8)  # "nan" is none: the model's value


def test_a_time_field_that_is_no_number_costs_no_more_than_any_other():
    # gpsd takes such a time (NaN) as x86-64 converts it: INT64_MIN seconds
    # and nanoseconds; the cycle detector once carried those nanoseconds
    # into seconds one at a time, billions of steps a sentence. In a child
    # process, so that a stall fails the test instead of hanging the run.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        from functools import reduce
        from gatewayd.nmea import NmeaDecoder

        def s(body):
            c = reduce(lambda a, ch: a ^ ord(ch), body, 0)
            return f"${body}*{c:02X}\\r\\n".encode()

        data = b"".join(
            s(f"GPRMC,1234{i:02d}.00,A,4846.8,N,00910.8,E,1,1,010126,,,A")
            + s("GPGBS,x,1,1,1,,,") for i in range(10))
        d = NmeaDecoder()
        fixes = d.feed(data) + d.flush()
        print(d.stats().sentences, *[f.time for f in fixes])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    sentences, *times = proc.stdout.split()
    # every RMC reported, each in a cycle of its own, as gpsd reports them
    assert int(sentences) == 20
    assert times == [f"2026-01-01T12:34:{i:02d}.000Z" for i in range(10)]


def test_a_date_before_2017_is_taken_for_a_receiver_1024_weeks_behind():
    # gpsd knows 18 leap seconds, the 18th from 2017 on; an earlier date is a
    # receiver fooled by a GPS week rollover. gpsd's own Garmin 48 test log
    # (6 June 2001) comes out as 20 January 2021.
    rmc = s("GPRMC,225308,A,4527.458,S,16709.165,E,000.0,094.5,060601,024.1,E")
    assert decode(rmc)[0][0].time == "2021-01-20T22:53:08.000Z"
    # unless the receiver says how many leap seconds there are (Garmin's PGRMF)
    pgrmf = s("PGRMF,290,293895,160305,093802,13,5213.1439,N,02100.6511,E,A,2,0,226,2,1")
    fixes, _ = decode(pgrmf + s("GPRMC,093803,A,5213.1439,N,02100.6511,E,000.0,226.0,160305,"
                                "004.2,E,D"))
    assert fixes[-1].time == "2005-03-16T09:38:03.000Z"


def test_a_sentence_without_a_checksum_loses_its_last_field_as_in_gpsd():
    body = "GPRMC,120000.00,A,4846.8,N,00910.8,E,10.0,123.4,031126"  # the date is last
    assert decode(s(body))[0][0].time == "2026-11-03T12:00:00.000Z"
    fixes, d = decode(f"${body}\r\n".encode())
    assert d.stats().no_checksum == 1
    assert fixes[0].time is None and fixes[0].lat == pytest.approx(48.78)


def test_fix_json_written_in_c_is_what_json_dumps_writes():
    import json

    import numpy as np

    from gatewayd import nmea

    rng = np.random.default_rng(5)
    digits = [None, 9, 9, 4, 4, 3, 3, 4, 3, 1, 3, 3, 3, 3]
    n = 4000
    rows = np.zeros(n, dtype=nmea._FIX_DTYPE)
    rows["mode"] = 3
    rows["present"] = rng.integers(0, 1 << 14, n)
    # Magnitudes from tiny to large, negative and positive, and exact zeros
    # (-0.0 among them): each rounded as the decoder rounds it.
    scale = 10.0 ** rng.integers(-12, 7, (n, 14))
    values = rng.uniform(-1, 1, (n, 14)) * scale
    values[rng.random((n, 14)) < 0.05] = 0.0
    values[rng.random((n, 14)) < 0.02] = -0.0
    values[:, 0] = rng.integers(2, 9, n)  # status is a small integer
    for k, d in enumerate(digits):
        if d is not None:
            values[:, k] = [round(v, d) for v in values[:, k]]
    rows["values"] = values
    written = nmea._members_json(rows)
    fallback = 0
    for row, text in zip(rows, written):
        present = int(row["present"])
        picked = [row["values"][k] for k in range(14) if present >> k & 1]
        want = "".join(f',"{nmea._VALUES[k]}":{json.dumps(int(v) if k == 0 else float(v))}'
                       for k, v in zip([k for k in range(14) if present >> k & 1], picked))
        if text is None:
            fallback += 1
            assert any(v != 0 and abs(v) < 1e-4 for v in picked)
        else:
            assert text == want
    assert 0 < fallback < n // 2


def test_fix_json_fills_a_buffer_of_exactly_its_size():
    import numpy as np
    from gatewayd._native import ffi, lib

    from gatewayd import nmea

    rows = NmeaDecoder().feed_block(cycle("120000.00") + cycle("120001.00")).rows
    # and last, a fix with a value too small for fixed point, left to Python
    rows = np.concatenate([rows, rows[-1:]])
    rows[-1]["values"][13] = 1e-5
    rows[-1]["present"] |= 1 << 13
    n = len(rows)
    fixes = ffi.from_buffer("gw_fix[]", rows)
    ends = np.empty(n, dtype=np.int64)

    def write(cap: int) -> tuple[int, bytes]:
        out = ffi.new("char[]", max(cap, 1))
        used = lib.gw_fix_json(fixes, n, out, cap, ffi.from_buffer("int64_t[]", ends))
        return used, ffi.unpack(out, max(used, 0))

    used, roomy = write(n * nmea._JSON_PER_FIX)
    assert used > 0 and ends[-2] == used and ends[-1] == -1
    assert write(used) == (used, roomy)
    assert write(used - 1)[0] == -1
