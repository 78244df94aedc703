"""NMEA captures in the manner of real receivers, one per chipset family, for
holding the decoder against gpsd (tests/test_nmea_gpsd.py).

    .venv/bin/python tests/nmea_captures.py OUT_DIR   # writes NAME.nmea files

Each capture is a short drive (a vehicle leaving a depot, turning, climbing a
little), told in the sentences, talkers, field habits and cycle layout that
the family's receivers use: SiRF's GP-only 4800-baud set with millisecond
times and an empty geoid field, u-blox's GN talker with one GSA per
constellation (NMEA 4.10 system ids), GNS, GST, GBS and $PUBX, MediaTek's
$PMTK start-up and GGA/GSA/GSV/RMC/VTG, Garmin's whole-second times with
$PGRME/$PGRMZ and a GLL at the cycle's end, Quectel's mixed GP/GL/GA/GB
sky, SkyTraq's GP+BD pairs and $PSTI,030, BeiDou-only receivers (BD and GB
talkers), QZSS and NavIC talkers; and the situations that test cycle
assembly: a cold start with no fix, 2D fixes, a 10 Hz receiver, a drive over
midnight, a receiver whose last sentence changes, empty fields and line
noise. Everything is generated from a seeded random generator, so each
capture is the same on every run.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

__all__ = ["CAPTURES", "capture"]


def sentence(body: str) -> bytes:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _dm(value: float, lat: bool, decimals: int) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    degrees = int(value)
    minutes = round((value - degrees) * 60, decimals)
    if minutes >= 60:
        degrees, minutes = degrees + 1, 0.0
    width = 3 + decimals if decimals else 2
    return f"{degrees:0{2 if lat else 3}d}{minutes:0{width}.{decimals}f}", hemi


@dataclass
class State:
    """Where the vehicle is at one epoch, and what the receiver makes of it."""

    when: dt.datetime
    lat: float
    lon: float
    alt: float  # above mean sea level
    speed: float  # m/s
    track: float  # degrees true
    fix: int  # 0 none, 2 2D, 3 3D

    def hhmmss(self, decimals: int) -> str:
        t = self.when
        frac = t.microsecond / 1e6
        if decimals == 0:
            return t.strftime("%H%M%S")
        return t.strftime("%H%M%S") + f"{frac:.{decimals}f}"[1:]

    def ddmmyy(self) -> str:
        return self.when.strftime("%d%m%y")

    def latlon(self, decimals: int) -> str:
        lat, ns = _dm(self.lat, True, decimals)
        lon, ew = _dm(self.lon, False, decimals)
        return f"{lat},{ns},{lon},{ew}"

    @property
    def knots(self) -> float:
        return self.speed / 0.514444


def drive(rng: random.Random, start: dt.datetime, epochs: int, rate_hz: float = 1.0,
          lat: float = 48.78, lon: float = 9.18, alt: float = 245.0,
          acquire: int = 0, fix_2d: range = range(0)) -> Iterator[State]:
    """A vehicle leaving a depot; the first ``acquire`` epochs have no fix,
    those in ``fix_2d`` only a 2D one."""
    step = 1.0 / rate_hz
    speed, track = 0.0, rng.uniform(0, 360)
    for k in range(epochs):
        when = start + dt.timedelta(seconds=k * step)
        speed = max(0.0, min(16.0, speed + rng.uniform(-0.3, 0.9) * step))
        track = (track + rng.uniform(-6, 6) * step) % 360
        lat += speed * step * math.cos(math.radians(track)) / 111_320
        east = speed * step * math.sin(math.radians(track))
        lon += east / (111_320 * math.cos(math.radians(lat)))
        alt += rng.uniform(-0.4, 0.5) * step
        fix = 0 if k < acquire else 2 if k in fix_2d else 3
        yield State(when, lat, lon, alt, speed, track, fix)


@dataclass
class Sky:
    """Satellites in view for one constellation: (id, elevation, azimuth, snr)."""

    sats: list[tuple[int, int, int, int]]

    @classmethod
    def of(cls, rng: random.Random, ids: list[int]) -> Sky:
        return cls([(i, rng.randint(5, 85), rng.randint(0, 359), rng.randint(18, 48))
                    for i in ids])

    def drift(self, rng: random.Random) -> None:
        self.sats = [(i, max(1, min(89, e + rng.choice((-1, 0, 0, 1)))),
                      (a + rng.choice((0, 1))) % 360, max(0, min(50, s + rng.randint(-2, 2))))
                     for i, e, a, s in self.sats]

    def used(self, k: int = 12) -> list[int]:
        return [i for i, _, _, s in self.sats if s >= 25][:k]


def gsv(talker: str, sky: Sky, signal: str = "") -> list[bytes]:
    groups = [sky.sats[i:i + 4] for i in range(0, len(sky.sats), 4)] or [[]]
    out = []
    for n, group in enumerate(groups, 1):
        fields = "".join(f",{i:02d},{e:02d},{a:03d},{s:02d}" if s else f",{i:02d},{e:02d},{a:03d},"
                         for i, e, a, s in group)
        out.append(sentence(f"{talker}GSV,{len(groups)},{n},{len(sky.sats):02d}{fields}{signal}"))
    return out


def gsa(talker: str, mode: int, used: list[int], pdop: float, hdop: float, vdop: float,
        system: str = "") -> bytes:
    ids = [f"{i:02d}" for i in used[:12]] + [""] * (12 - len(used[:12]))
    tail = f",{system}" if system else ""
    return sentence(f"{talker}GSA,A,{mode},{','.join(ids)},{pdop:.2f},{hdop:.2f},{vdop:.2f}{tail}")


def _dops(rng: random.Random, fix: int) -> tuple[float, float, float]:
    if not fix:
        return 99.99, 99.99, 99.99
    h = rng.uniform(0.6, 1.4)
    v = h * rng.uniform(1.2, 1.8)
    return math.hypot(h, v), h, v


# ---- the families --------------------------------------------------------


def sirf(rng: random.Random) -> bytes:
    """SiRFstar III at 4800 baud: GP talker only, GGA GSA GSV RMC, times to the
    millisecond, an empty geoid separation, no mode indicator (NMEA 2.2),
    GSV only every fifth second (4800 baud has no room for more), and the
    $PSRF150 banner at start."""
    sky = Sky.of(rng, [2, 4, 5, 9, 10, 12, 17, 25, 29, 31])
    out = [sentence("PSRF150,1"), sentence("PSRFTXT,Version:GSW3.5.0_3.5.00.00-SDK-3EP2.01 ")]
    for k, s in enumerate(drive(rng, dt.datetime(2024, 3, 14, 16, 12, 29, 487000, tzinfo=dt.UTC),
                                40, acquire=3)):
        sky.drift(rng)
        t = s.hhmmss(3)
        used = sky.used() if s.fix else []
        pdop, hdop, vdop = _dops(rng, s.fix)
        if s.fix:
            out.append(sentence(f"GPGGA,{t},{s.latlon(4)},1,{len(used):02d},{hdop:.1f},"
                                f"{s.alt:.1f},M,,,,0000"))
        else:
            out.append(sentence(f"GPGGA,{t},,,,,0,00,,,M,0.0,M,,0000"))
        out.append(gsa("GP", 3 if s.fix else 1, used, pdop, hdop, vdop))
        if k % 5 == 0:
            out += gsv("GP", sky)
        if s.fix:
            out.append(sentence(f"GPRMC,{t},A,{s.latlon(4)},{s.knots:.2f},{s.track:.2f},"
                                f"{s.ddmmyy()},,"))
        else:
            out.append(sentence(f"GPRMC,{t},V,,,,,,,{s.ddmmyy()},,"))
    return b"".join(out)


def ublox(rng: random.Random, rate_hz: float = 1.0, epochs: int = 40) -> bytes:
    """u-blox M9 (protocol 27, NMEA 4.10): GN talker, RMC VTG GGA, one GSA per
    constellation with its system id, GSV per constellation with its signal
    id, GLL, GST and $PUBX,00 each cycle."""
    skies = {"GP": (Sky.of(rng, [2, 5, 12, 15, 18, 24, 25, 29]), 1),
             "GL": (Sky.of(rng, [65, 71, 72, 81, 87]), 2),
             "GA": (Sky.of(rng, [4, 9, 11, 19, 36]), 3),
             "GB": (Sky.of(rng, [11, 12, 19, 23]), 4)}
    out = [sentence("GPTXT,01,01,02,u-blox AG - www.u-blox.com")]
    start = dt.datetime(2025, 6, 2, 7, 41, 11, tzinfo=dt.UTC)
    for s in drive(rng, start, epochs, rate_hz=rate_hz, acquire=2, lat=52.52, lon=13.40,
                   alt=38.0):
        for sky, _ in skies.values():
            sky.drift(rng)
        t = s.hhmmss(2)
        ok = bool(s.fix)
        pdop, hdop, vdop = _dops(rng, s.fix)
        pos = s.latlon(5) if ok else ",,,"
        if ok:
            out.append(sentence(f"GNRMC,{t},A,{pos},{s.knots:.3f},{s.track:.2f},{s.ddmmyy()},,,"
                                f"A,V"))
        else:
            out.append(sentence(f"GNRMC,{t},V,,,,,,,{s.ddmmyy()},,,N,V"))
        if ok:
            out.append(sentence(f"GNVTG,{s.track:.2f},T,,M,{s.knots:.3f},N,{s.speed * 3.6:.3f},"
                                f"K,A"))
            used = sum(len(sky.used()) for sky, _ in skies.values())
            out.append(sentence(f"GNGGA,{t},{pos},1,{min(used, 12):02d},{hdop:.2f},{s.alt:.1f},M,"
                                f"44.9,M,,"))
        else:
            out.append(sentence("GNVTG,,,,,,,,,N"))
            out.append(sentence(f"GNGGA,{t},,,,,0,00,99.99,,,,,,"))
        for _, (sky, system) in skies.items():
            out.append(gsa("GN", 3 if ok else 1, sky.used() if ok else [], pdop, hdop, vdop,
                           str(system)))
        if not (rate_hz > 1 and s.when.microsecond):  # GSV once a second
            for talker, (sky, _) in skies.items():
                out += gsv(talker, sky, ",1")
        out.append(sentence(f"GNGLL,{pos},{t},{'A' if ok else 'V'},{'A' if ok else 'N'}"))
        if ok:
            out.append(sentence(f"GNGST,{t},18,{hdop * 2.1:.1f},{hdop * 1.5:.1f},"
                                f"{rng.uniform(0, 180):.1f},{hdop * 1.6:.1f},{hdop * 1.9:.1f},"
                                f"{vdop * 2.4:.1f}"))
        lat, ns, lon, ew = (pos.split(",") if ok else ("", "", "", ""))
        out.append(sentence(f"PUBX,00,{t},{lat},{ns},{lon},{ew},{s.alt + 44.9:.3f},"
                            f"{'G3' if ok else 'NF'},{hdop * 1.8:.1f},{vdop * 2.2:.1f},"
                            f"{s.speed * 3.6:.3f},{s.track:.2f},0.000,,{hdop:.2f},{vdop:.2f},"
                            f"{pdop:.2f},12,0,0"))
    return b"".join(out)


def ublox_10hz(rng: random.Random) -> bytes:
    """The same receiver set to 10 Hz (times in tenths, GSV once a second)."""
    return ublox(rng, rate_hz=10.0, epochs=60)


def ublox_gns(rng: random.Random) -> bytes:
    """A u-blox 8 set to GNS and GBS instead of RMC and GGA (a configured
    output set, NMEA 4.0): the cycle ends with GBS."""
    sky = Sky.of(rng, [1, 3, 6, 7, 11, 14, 17, 19, 22, 28])
    glo = Sky.of(rng, [66, 67, 76, 77, 83])
    out = []
    for s in drive(rng, dt.datetime(2023, 9, 30, 14, 2, 7, tzinfo=dt.UTC), 30, lat=-33.87,
                   lon=151.21, alt=22.0):
        sky.drift(rng)
        glo.drift(rng)
        t = s.hhmmss(2)
        pdop, hdop, vdop = _dops(rng, s.fix)
        out.append(sentence(f"GNZDA,{t},{s.when:%d},{s.when:%m},{s.when:%Y},00,00"))
        out.append(sentence(f"GNGNS,{t},{s.latlon(5)},AA,{len(sky.used()) + len(glo.used()):02d},"
                            f"{hdop:.2f},{s.alt:.1f},22.1,,"))
        out.append(gsa("GN", 3, sky.used(), pdop, hdop, vdop))
        out.append(gsa("GN", 3, glo.used(), pdop, hdop, vdop))
        out += gsv("GP", sky) + gsv("GL", glo)
        out.append(sentence(f"GNGBS,{t},{hdop * 1.4:.1f},{hdop * 1.7:.1f},{vdop * 2.3:.1f},,,,"))
    return b"".join(out)


def mediatek(rng: random.Random) -> bytes:
    """MediaTek MT3339 at 9600 baud: $PMTK start-up messages, then GGA GSA GSV
    RMC VTG with millisecond times, GP talker, mode indicators; 2D at first,
    and differential (SBAS) once it has locked on."""
    sky = Sky.of(rng, [3, 6, 14, 16, 19, 22, 26, 31, 32])
    out = [sentence("PMTK011,MTKGPS"), sentence("PMTK010,001"), sentence("PMTK010,002")]
    for k, s in enumerate(drive(rng, dt.datetime(2022, 11, 20, 9, 59, 50, tzinfo=dt.UTC), 40,
                                acquire=4, lat=25.03, lon=121.56, alt=12.0,
                                fix_2d=range(4, 8))):
        sky.drift(rng)
        t = s.hhmmss(3)
        quality, faa = ("2", "D") if k >= 20 else ("1", "A")
        pdop, hdop, vdop = _dops(rng, s.fix)
        used = sky.used() if s.fix == 3 else sky.used()[:3] if s.fix else []
        if s.fix:
            alt = f"{s.alt:.1f}" if s.fix == 3 else ""
            out.append(sentence(f"GPGGA,{t},{s.latlon(4)},{quality},{len(used):02d},{hdop:.2f},"
                                f"{alt},M,15.2,M,,"))
        else:
            out.append(sentence(f"GPGGA,{t},,,,,0,0,,,M,,M,,"))
        out.append(gsa("GP", s.fix or 1, used, pdop, hdop, vdop))
        out += gsv("GP", sky)
        if s.fix:
            out.append(sentence(f"GPRMC,{t},A,{s.latlon(4)},{s.knots:.2f},{s.track:.2f},"
                                f"{s.ddmmyy()},,,{faa}"))
            out.append(sentence(f"GPVTG,{s.track:.2f},T,,M,{s.knots:.2f},N,{s.speed * 3.6:.2f},K,"
                                f"{faa}"))
        else:
            out.append(sentence(f"GPRMC,{t},V,,,,,0.00,0.00,{s.ddmmyy()},,,N"))
            out.append(sentence("GPVTG,0.00,T,,M,0.00,N,0.00,K,N"))
    return b"".join(out)


def garmin(rng: random.Random) -> bytes:
    """A Garmin handheld (GPS 18-like): whole-second times, RMC GGA GSA GSV,
    $PGRME error estimates, a GLL a second behind the others at the cycle's
    end, $PGRMZ altitude in feet, $PGRMM datum, and route sentences."""
    sky = Sky.of(rng, [1, 3, 4, 13, 20, 22, 24, 27, 28])
    out = []
    for s in drive(rng, dt.datetime(2021, 8, 6, 22, 53, 8, tzinfo=dt.UTC), 30, lat=-45.457,
                   lon=167.15, alt=14.7):
        sky.drift(rng)
        t = s.hhmmss(0)
        pdop, hdop, vdop = _dops(rng, s.fix)
        out.append(sentence(f"GPRMC,{t},A,{s.latlon(3)},{s.knots:05.1f},{s.track:05.1f},"
                            f"{s.ddmmyy()},024.1,E"))
        out.append(sentence("GPRMB,A,,,,,,,,,,,,V"))
        out.append(sentence(f"GPGGA,{t},{s.latlon(3)},1,{len(sky.used()):02d},{hdop:.1f},"
                            f"{s.alt:.1f},M,1.1,M,,"))
        out.append(gsa("GP", 3, sky.used(), pdop, hdop, vdop))
        out += gsv("GP", sky)
        out.append(sentence(f"PGRME,{hdop * 4.3:.1f},M,{vdop * 7.1:.1f},M,{pdop * 5.9:.1f},M"))
        later = s.when + dt.timedelta(seconds=1)
        out.append(sentence(f"GPGLL,{s.latlon(3)},{later:%H%M%S},A"))
        out.append(sentence(f"PGRMZ,{round(s.alt / 0.3048)},f,3"))
        out.append(sentence("PGRMM,WGS 84"))
        out.append(sentence("GPBOD,,T,,M,,"))
        out.append(sentence("GPRTE,1,1,c,0"))
    return b"".join(out)


def quectel(rng: random.Random) -> bytes:
    """Quectel L76-L/LC86: RMC VTG GGA from GN, one GNGSA per constellation
    (GPS, GLONASS, Galileo, BeiDou with system ids), GSV from GP, GL, GA and
    GB, and GLL."""
    skies = {"GP": (Sky.of(rng, [5, 13, 15, 18, 20, 23, 24, 29]), 1),
             "GL": (Sky.of(rng, [68, 69, 78, 79, 84]), 2),
             "GA": (Sky.of(rng, [1, 4, 19, 21, 26]), 3),
             "GB": (Sky.of(rng, [6, 9, 16, 39, 40]), 4)}
    out = [sentence("PQTMVERNO,LC86LNR01A03S,2022/04/20,11:38:03")]
    for s in drive(rng, dt.datetime(2024, 12, 9, 3, 20, 41, tzinfo=dt.UTC), 40, acquire=2,
                   lat=31.23, lon=121.47, alt=8.0):
        for sky, _ in skies.values():
            sky.drift(rng)
        t = s.hhmmss(3)
        pdop, hdop, vdop = _dops(rng, s.fix)
        if s.fix:
            out.append(sentence(f"GNRMC,{t},A,{s.latlon(4)},{s.knots:.2f},{s.track:.2f},"
                                f"{s.ddmmyy()},,,A,V"))
            out.append(sentence(f"GNVTG,{s.track:.2f},T,,M,{s.knots:.2f},N,{s.speed * 3.6:.2f},"
                                f"K,A"))
            out.append(sentence(f"GNGGA,{t},{s.latlon(4)},1,{12:02d},{hdop:.2f},{s.alt:.1f},M,"
                                f"7.8,M,,"))
        else:
            out.append(sentence(f"GNRMC,{t},V,,,,,,,{s.ddmmyy()},,,N,V"))
            out.append(sentence("GNVTG,,T,,M,,N,,K,N"))
            out.append(sentence(f"GNGGA,{t},,,,,0,00,99.99,,M,,M,,"))
        for sky, system in skies.values():
            out.append(gsa("GN", 3 if s.fix else 1, sky.used() if s.fix else [], pdop, hdop,
                           vdop, str(system)))
        for talker, (sky, _) in skies.items():
            out += gsv(talker, sky, ",1")
        pos = s.latlon(4) if s.fix else ",,,"
        out.append(sentence(f"GNGLL,{pos},{t},{'A' if s.fix else 'V'},{'A' if s.fix else 'N'}"))
    return b"".join(out)


def skytraq(rng: random.Random) -> bytes:
    """SkyTraq Venus 8 (S1216) in GPS+BeiDou: GGA, a GPGSA and a BDGSA, GSV
    from GP and BD, RMC, VTG, ZDA, and $PSTI,030 with ENU velocity."""
    gps, bds = Sky.of(rng, [2, 6, 12, 17, 19, 24, 25]), Sky.of(rng, [1, 3, 6, 8, 13, 14])
    out = []
    for s in drive(rng, dt.datetime(2023, 2, 17, 5, 33, 12, tzinfo=dt.UTC), 30, lat=24.78,
                   lon=120.99, alt=78.0):
        gps.drift(rng)
        bds.drift(rng)
        t = s.hhmmss(3)
        pdop, hdop, vdop = _dops(rng, s.fix)
        out.append(sentence(f"GPGGA,{t},{s.latlon(6)},1,{len(gps.used()) + len(bds.used()):02d},"
                            f"{hdop:.1f},{s.alt:.1f},M,17.0,M,,"))
        out.append(gsa("GP", 3, gps.used(), pdop, hdop, vdop))
        out.append(gsa("BD", 3, bds.used(), pdop, hdop, vdop))
        out += gsv("GP", gps) + gsv("BD", bds)
        out.append(sentence(f"GPRMC,{t},A,{s.latlon(6)},{s.knots:.1f},{s.track:.1f},"
                            f"{s.ddmmyy()},,,A"))
        out.append(sentence(f"GPVTG,{s.track:.1f},T,,M,{s.knots:.1f},N,{s.speed * 3.6:.1f},K,A"))
        out.append(sentence(f"GPZDA,{t},{s.when:%d},{s.when:%m},{s.when:%Y},00,00"))
        east = s.speed * math.sin(math.radians(s.track))
        north = s.speed * math.cos(math.radians(s.track))
        out.append(sentence(f"PSTI,030,{t},A,{s.latlon(7)},{s.alt:.3f},{east:.3f},{north:.3f},"
                            f"{rng.uniform(-0.2, 0.2):.3f},{s.ddmmyy()},A,,"))
    return b"".join(out)


def beidou(rng: random.Random, talker: str = "BD") -> bytes:
    """A BeiDou-only receiver (the BD talker of Chinese modules; GB in NMEA 4.10
    ones): GGA GSA GSV RMC ZDA all from BeiDou."""
    sky = Sky.of(rng, [1, 2, 3, 4, 6, 7, 9, 10, 13, 16])
    out = []
    for s in drive(rng, dt.datetime(2024, 7, 1, 10, 0, 3, tzinfo=dt.UTC), 30, lat=39.90,
                   lon=116.40, alt=52.0):
        sky.drift(rng)
        t = s.hhmmss(2)
        pdop, hdop, vdop = _dops(rng, s.fix)
        out.append(sentence(f"{talker}GGA,{t},{s.latlon(5)},1,{len(sky.used()):02d},{hdop:.1f},"
                            f"{s.alt:.1f},M,-8.1,M,,"))
        out.append(gsa(talker, 3, sky.used(), pdop, hdop, vdop))
        out += gsv(talker, sky)
        out.append(sentence(f"{talker}RMC,{t},A,{s.latlon(5)},{s.knots:.3f},{s.track:.2f},"
                            f"{s.ddmmyy()},,,A"))
        out.append(sentence(f"{talker}ZDA,{t},{s.when:%d},{s.when:%m},{s.when:%Y},00,00"))
    return b"".join(out)


def beidou_gb(rng: random.Random) -> bytes:
    return beidou(rng, "GB")


def qzss_navic(rng: random.Random) -> bytes:
    """A receiver in Japan and India's regional systems: GPS with QZSS (QZ
    talker GSV, and Quectel's $PQGSA/$PQGSV for QZSS), and NavIC (GI talker,
    NMEA 4.11) with QZSS as GQ."""
    gps, qzs, irn = Sky.of(rng, [3, 8, 10, 16, 26, 27, 32]), Sky.of(rng, [1, 2, 3]), \
        Sky.of(rng, [2, 3, 5, 6])
    out = []
    for s in drive(rng, dt.datetime(2025, 1, 15, 2, 30, 44, tzinfo=dt.UTC), 30, lat=35.68,
                   lon=139.69, alt=40.0):
        gps.drift(rng)
        qzs.drift(rng)
        irn.drift(rng)
        t = s.hhmmss(2)
        pdop, hdop, vdop = _dops(rng, s.fix)
        out.append(sentence(f"GNRMC,{t},A,{s.latlon(5)},{s.knots:.3f},{s.track:.2f},"
                            f"{s.ddmmyy()},,,A,V"))
        out.append(sentence(f"GNGGA,{t},{s.latlon(5)},1,12,{hdop:.2f},{s.alt:.1f},M,36.7,M,,"))
        out.append(gsa("GN", 3, gps.used(), pdop, hdop, vdop, "1"))
        out.append(gsa("GN", 3, [193 + i for i in range(2)], pdop, hdop, vdop, "5"))
        out.append(gsa("GI", 3, irn.used(), pdop, hdop, vdop, "6"))
        out += gsv("GP", gps, ",1") + gsv("QZ", qzs, ",1") + gsv("GQ", qzs, ",1")
        out += gsv("GI", irn, ",1")
    return b"".join(out)


def midnight(rng: random.Random) -> bytes:
    """A drive over midnight, New Year's Eve, RMC and GGA from GP, and a ZDA."""
    out = []
    for s in drive(rng, dt.datetime(2025, 12, 31, 23, 59, 45, tzinfo=dt.UTC), 30):
        t = s.hhmmss(2)
        out.append(sentence(f"GPGGA,{t},{s.latlon(5)},1,09,0.9,{s.alt:.1f},M,47.9,M,,"))
        out.append(sentence(f"GPRMC,{t},A,{s.latlon(5)},{s.knots:.3f},{s.track:.2f},"
                            f"{s.ddmmyy()},,,A"))
        out.append(sentence(f"GPZDA,{t},{s.when:%d},{s.when:%m},{s.when:%Y},00,00"))
    return b"".join(out)


def ender_change(rng: random.Random) -> bytes:
    """A receiver reconfigured on the way: RMC and GGA, then a GLL added at
    each cycle's end, then GGA dropped from some cycles, as gpsd's cycle
    detector sees when a receiver's output set changes."""
    out = []
    for k, s in enumerate(drive(rng, dt.datetime(2024, 10, 30, 9, 38, 2, tzinfo=dt.UTC), 36)):
        t = s.hhmmss(0)
        out.append(sentence(f"GPRMC,{t},A,{s.latlon(4)},{s.knots:05.1f},{s.track:05.1f},"
                            f"{s.ddmmyy()},004.2,E,A"))
        if k < 24 or k % 3:
            out.append(sentence(f"GPGGA,{t},{s.latlon(4)},1,08,1.1,{s.alt:.1f},M,36.2,M,,"))
        out.append(sentence("GPGSA,A,3,03,06,15,16,18,19,21,22,,,,,1.6,0.9,1.3"))
        if k >= 12:
            out.append(sentence(f"GPGLL,{s.latlon(4)},{t},A,A"))
    return b"".join(out)


def empty_fields(rng: random.Random) -> bytes:
    """Sentences with fields left empty, as receivers send them while a fix is
    partial: RMC without speed or track, GGA without altitude or geoid, VTG
    with nothing, GSA without DOPs, and a quality-0 GGA that still has a
    position."""
    out = []
    for k, s in enumerate(drive(rng, dt.datetime(2023, 5, 5, 12, 0, 0, tzinfo=dt.UTC), 30)):
        t = s.hhmmss(2)
        speed = f"{s.knots:.2f}" if k % 4 else ""
        track = f"{s.track:.1f}" if k % 5 else ""
        alt = f"{s.alt:.1f}" if k % 3 else ""
        sep = "47.9" if k % 2 else ""
        quality = "0" if k % 7 == 3 else "1"
        out.append(sentence(f"GPRMC,{t},A,{s.latlon(4)},{speed},{track},{s.ddmmyy()},,,A"))
        out.append(sentence(f"GPGGA,{t},{s.latlon(4)},{quality},07,,{alt},M,{sep},M,,"))
        out.append(sentence("GPVTG,,T,,M,,N,,K,N" if k % 2 else
                            f"GPVTG,{s.track:.1f},T,,M,{s.knots:.2f},N,,K,A"))
        out.append(sentence("GPGSA,A,3,04,05,09,12,,,,,,,,,,," if k % 2 else
                            "GPGSA,A,3,04,05,09,12,,,,,,,,,2.1,1.1,1.8"))
    return b"".join(out)


_NOISE = b"\x00\x00\x00\xfe\xfc\xf8\xe0\x80\x7f~^"


def noisy(rng: random.Random) -> bytes:
    """A u-blox capture from a flaky cable: bursts of line noise between
    sentences, a sentence with a damaged checksum, a cut-off line, and extra
    line ends."""
    clean = ublox(random.Random(7)).split(b"\r\n")
    out = []
    for k, line in enumerate(clean):
        if not line:
            continue
        if k % 17 == 5:
            # line noise: NULs and bit-flipped bytes, none of which starts
            # a packet of any protocol gpsd sniffs for
            burst = bytes(rng.choice(_NOISE) for _ in range(rng.randint(3, 40)))
            out.append(burst + b"\r\n")
        if k % 29 == 11:
            body = bytearray(line)
            body[10] ^= 0x04
            out.append(bytes(body) + b"\r\n")
            continue
        if k % 41 == 20:
            out.append(line[:len(line) // 2] + b"\r\n")
            continue
        out.append(line + (b"\r\n\r\n" if k % 13 == 0 else b"\r\n"))
    return b"".join(out)


CAPTURES: dict[str, Callable[[random.Random], bytes]] = {
    "sirf": sirf,
    "ublox": ublox,
    "ublox-10hz": ublox_10hz,
    "ublox-gns": ublox_gns,
    "mediatek": mediatek,
    "garmin": garmin,
    "quectel": quectel,
    "skytraq": skytraq,
    "beidou-bd": beidou,
    "beidou-gb": beidou_gb,
    "qzss-navic": qzss_navic,
    "midnight": midnight,
    "ender-change": ender_change,
    "empty-fields": empty_fields,
    "noisy": noisy,
}


def capture(name: str) -> bytes:
    return CAPTURES[name](random.Random(f"gatewayd-{name}"))


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CAPTURES:
        (out_dir / f"{name}.nmea").write_bytes(capture(name))
