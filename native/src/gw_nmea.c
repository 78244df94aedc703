/*
 * NMEA 0183 decoding in one pass over a block of serial bytes.
 *
 * Framing (gw_nmea_scan, and the first step of gw_nmea_decode): every
 * sentence is found, its checksum checked and its place reported. Survives
 * garbage and binary bytes, resyncs at '$', accepts sentences glued without
 * CR/LF when their checksum closes them, and never holds more than one
 * partial sentence. The CR/LF run after a sentence is no garbage, even when
 * a block ends inside it.
 *
 * Fix assembly (gw_nmea_decode): the fields of good sentences are read and
 * fixes reported as gpsd 3.22 reports them, by the rules gatewayd/nmea.py
 * states; the section below says how closely it follows gpsd's code.
 */
#include "gateway.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int gw_hex(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Status of buf[s..e), a candidate sentence starting with '$'. */
static int gw_judge(const uint8_t *buf, int64_t s, int64_t e, int64_t max_len)
{
    while (e > s && (buf[e - 1] == ' ' || buf[e - 1] == '\t'))
        e--;
    if (e - s > max_len)
        return GW_NMEA_TOO_LONG;
    if (e - s >= 4 && buf[e - 3] == '*') {
        int hi = gw_hex(buf[e - 2]), lo = gw_hex(buf[e - 1]);
        if (hi < 0 || lo < 0)
            return GW_NMEA_BAD_CHECKSUM;
        uint8_t sum = 0;
        for (int64_t k = s + 1; k < e - 3; k++)
            sum ^= buf[k];
        return sum == (uint8_t)(hi * 16 + lo) ? GW_NMEA_OK : GW_NMEA_BAD_CHECKSUM;
    }
    for (int64_t k = s + 1; k < e; k++)
        if (buf[k] < 0x20 || buf[k] > 0x7e)
            return GW_NMEA_TRUNCATED; /* binary inside: not a sentence */
    return GW_NMEA_NO_CHECKSUM;
}

static int gw_closed_by_checksum(const uint8_t *buf, int64_t s, int64_t e)
{
    return e - s >= 4 && buf[e - 3] == '*' && gw_hex(buf[e - 2]) >= 0 && gw_hex(buf[e - 1]) >= 0;
}

/* The next sentence from pos on. 1: a sentence at [*s, *e) with *status, to
 * go on at *next; 0: a partial sentence starts at *s and waits for more
 * bytes; -1: no sentence starts before n. */
static int gw_next_sentence(const uint8_t *buf, int64_t n, int64_t pos, int64_t max_len,
                            int final, int64_t *s_out, int64_t *e_out, int *status,
                            int64_t *next, int64_t *garbage)
{
    int64_t s = pos;
    while (s < n && buf[s] != '$')
        s++;
    *garbage += s - pos;
    if (s >= n)
        return -1;
    int64_t e = s + 1;
    while (e < n && buf[e] != '\r' && buf[e] != '\n' && buf[e] != '$' && e - s <= max_len + 8)
        e++;
    if (e < n && (buf[e] == '\r' || buf[e] == '\n')) {
        *status = gw_judge(buf, s, e, max_len);
        *next = e + 1;
    } else if (e < n && buf[e] == '$') {
        /* Another sentence starts: this one is complete only if its
         * checksum closes it (sentences glued without CR/LF). */
        *status = gw_closed_by_checksum(buf, s, e) ? gw_judge(buf, s, e, max_len)
                                                   : GW_NMEA_TRUNCATED;
        *next = e;
    } else if (e - s > max_len + 8 && (e < n || final)) {
        /* Too long, seen by the byte after it: when the block ends there,
         * that byte (a CR or LF closing the sentence, or not) is awaited,
         * so that where blocks end changes nothing. */
        *status = GW_NMEA_TOO_LONG;
        *next = e;
    } else if (final) {
        *status = gw_closed_by_checksum(buf, s, n) ? gw_judge(buf, s, n, max_len)
                                                   : GW_NMEA_TRUNCATED;
        e = n;
        *next = n;
    } else {
        *s_out = s;
        return 0;
    }
    *s_out = s;
    *e_out = e;
    return 1;
}

static int64_t gw_skip_line_ends(const uint8_t *buf, int64_t n, int64_t pos)
{
    while (pos < n && (buf[pos] == '\r' || buf[pos] == '\n'))
        pos++;
    return pos;
}

int64_t gw_nmea_scan(const uint8_t *buf, int64_t n, int64_t max_len, int final,
                     int64_t *out, int64_t capacity, int64_t *consumed, int64_t *garbage)
{
    int64_t count = 0, pos = 0;
    *consumed = 0;
    while (pos < n && count < capacity) {
        int64_t s = 0, e = 0, next = 0;
        int status = 0;
        int found = gw_next_sentence(buf, n, pos, max_len, final, &s, &e, &status, &next,
                                     garbage);
        if (found < 0) {
            pos = n;
            break;
        }
        if (found == 0) {
            /* A partial sentence: keep it for the next block. */
            *consumed = s;
            return count;
        }
        out[3 * count] = s;
        out[3 * count + 1] = e;
        out[3 * count + 2] = status;
        count++;
        pos = gw_skip_line_ends(buf, n, next);
    }
    *consumed = pos;
    return count;
}

/* ---- fix assembly: gpsd's NMEA driver and fix merging, sentence by sentence ----
 *
 * What follows mirrors gpsd 3.22 (drivers/driver_nmea0183.c, the merging and
 * error model of gpsd/libgpsd_core.c, and the report rule of gpsd/gpsd.c)
 * closely enough that the same stream gives the same TPV reports, quirks
 * included: numbers are read as gpsd reads them (a prefix of digits, an
 * empty field as NaN), and derived values (altHAE from the geoid model,
 * magvar from the declination model, speed and climb from successive fixes,
 * error estimates from DOPs) are computed as gpsd computes them. */

/* gpsd's mask bits, as far as the fix goes. */
#define GW_M_ONLINE (1u << 0)
#define GW_M_TIME (1u << 1)
#define GW_M_LATLON (1u << 2)
#define GW_M_ALTITUDE (1u << 3)
#define GW_M_SPEED (1u << 4)
#define GW_M_TRACK (1u << 5)
#define GW_M_CLIMB (1u << 6)
#define GW_M_STATUS (1u << 7)
#define GW_M_MODE (1u << 8)
#define GW_M_DOP (1u << 9)
#define GW_M_HERR (1u << 10)
#define GW_M_VERR (1u << 11)
#define GW_M_SATELLITE (1u << 12)
#define GW_M_GST (1u << 13)
#define GW_M_MAGNETIC_TRACK (1u << 14)
#define GW_M_VNED (1u << 15)
#define GW_M_USED (1u << 16)
#define GW_M_NTPTIME (1u << 17)
#define GW_M_PERR (1u << 18)
#define GW_M_CLEAR (1u << 19)
#define GW_M_REPORT (1u << 20)
#define GW_M_PACKET (1u << 21)
/* What makes a report worth sending (gpsd's DATA_IS). */
#define GW_M_DATA (~(GW_M_ONLINE | GW_M_PACKET | GW_M_CLEAR | GW_M_REPORT))

#define GW_MODE_NOT_SEEN 0
#define GW_MODE_NO_FIX 1
#define GW_MODE_2D 2
#define GW_MODE_3D 3
#define GW_STATUS_NO_FIX 0
#define GW_STATUS_FIX 1
#define GW_STATUS_DGPS_FIX 2
#define GW_STATUS_RTK_FIX 3
#define GW_STATUS_RTK_FLT 4
#define GW_STATUS_DR 5
#define GW_STATUS_TIME 7
#define GW_STATUS_SIM 8
#define GW_STATUS_PPS_FIX 9

#define GW_KNOTS_TO_MPS (1.852 / 3.6)
#define GW_FEET_TO_METERS 0.3048
#define GW_MPS_TO_KPH 3.6
#define GW_DEG_2_RAD 0.0174532925199432957692369076848861271
#define GW_RAD_2_DEG 57.2957795130823208767981548141051703
#define GW_CONFIDENCE_PER_CEP50 (2.45 / 1.18)
#define GW_LEAP_SECONDS 18               /* gpsd 3.22's BUILD_LEAPSECONDS */
#define GW_LEAP_18_SINCE 1483228800LL    /* 2017-01-01T00:00:00Z */
#define GW_ROLLOVER_S 619315200LL        /* 1024 GPS weeks */
#define GW_MAX_FIELDS 100                /* gpsd's NMEA_MAX_FLD */
#define GW_GPSD_NMEA_MAX 102

/* Sentence types, in gatewayd.nmea.SENTENCE_TYPES order (bits of enders);
 * a sentence's tag is its type + 1, 0 for none. */
enum {
    GW_GGA, GW_RMC, GW_GNS, GW_GLL, GW_VTG, GW_GSA, GW_GSV, GW_ZDA, GW_GST, GW_GBS,
    GW_PGRME, GW_PGRMZ, GW_PSRFEPE, GW_PMGNST, GW_PSTI, GW_PGRMF
};
static const char gw_types[][8] = {"GGA", "RMC", "GNS", "GLL", "VTG", "GSA", "GSV", "ZDA",
                                   "GST", "GBS", "PGRME", "PGRMZ", "PSRFEPE", "PMGNST", "PSTI",
                                   "PGRMF"};
/* gpsd's minimum field counts. */
static const int gw_min_fields[] = {13, 8, 13, 7, 5, 18, 0, 4, 8, 7, 7, 4, 7, 8, 2, 15};
static const char gw_talkers[][3] = {"GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "GQ"};

/* gpsd's JSON precision per value (-1: not rounded). */
static const int gw_digits[GW_FIX_FIELDS] = {-1, 9, 9, 4, 4, 3, 3, 4, 3, 1, 3, 3, 3, 3};

enum {
    GW_F_STATUS, GW_F_LAT, GW_F_LON, GW_F_ALT_MSL, GW_F_ALT_HAE, GW_F_GEOID_SEP, GW_F_SPEED,
    GW_F_TRACK, GW_F_CLIMB, GW_F_MAGVAR, GW_F_EPH, GW_F_EPX, GW_F_EPY, GW_F_EPV
};

typedef struct {
    const uint8_t *at;
    int64_t len;
} gw_text;

typedef struct {
    gw_text f[GW_MAX_FIELDS];
    int n;     /* fields split, and read */
    int count; /* gpsd's count: the fields before the checksum */
} gw_fields;

static gw_text gw_field(const gw_fields *fl, int k)
{
    static const uint8_t empty[1] = {0};
    if (k < fl->n)
        return fl->f[k];
    gw_text none = {empty, 0};
    return none;
}

/* A field's k-th character, 0 past its end (as gpsd's NUL). */
static int gw_ch(gw_text t, int64_t k) { return k < t.len ? t.at[k] : 0; }

static int gw_isdigit(int c) { return c >= '0' && c <= '9'; }
static int gw_isspace(int c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static int gw_is(gw_text t, const char *s)
{
    size_t n = strlen(s);
    return t.len == (int64_t)n && memcmp(t.at, s, n) == 0;
}

/* strtol(text, &end, 10) on a field; *end_at: where the digits stopped. */
static long gw_strtol(gw_text t, int64_t *end_at)
{
    int64_t k = 0;
    while (k < t.len && gw_isspace(t.at[k]))
        k++;
    int negative = 0;
    if (k < t.len && (t.at[k] == '+' || t.at[k] == '-')) {
        negative = t.at[k] == '-';
        k++;
    }
    if (k >= t.len || !gw_isdigit(t.at[k])) {
        *end_at = 0; /* no number: strtol leaves end at the start */
        return 0;
    }
    unsigned long long v = 0;
    int overflow = 0;
    while (k < t.len && gw_isdigit(t.at[k])) {
        if (v > (9223372036854775807ULL - (unsigned)(t.at[k] - '0')) / 10)
            overflow = 1;
        else
            v = v * 10 + (unsigned)(t.at[k] - '0');
        k++;
    }
    *end_at = k;
    if (overflow)
        return negative ? (-9223372036854775807L - 1) : 9223372036854775807L;
    return negative ? -(long)v : (long)v;
}

/* C's atoi. */
static int gw_atoi(gw_text t)
{
    int64_t end;
    return (int)gw_strtol(t, &end);
}

/* gpsd's safe_atof: NaN unless the field starts as a number; the digits
 * that follow make it, whatever comes after them. */
static double gw_atof(gw_text t)
{
    static const double powers_of_10[] = {10., 100., 1.0e4, 1.0e8, 1.0e16,
                                          1.0e32, 1.0e64, 1.0e128, 1.0e256};
    int64_t p = 0;
    int sign = 0, exp_sign = 0;
    while (gw_isspace(gw_ch(t, p)))
        p++;
    int c = gw_ch(t, p);
    if (gw_isdigit(c)) {
    } else if (c == '-') {
        sign = 1;
        p++;
    } else if (c == '+') {
        p++;
    } else if (c != '.') {
        return NAN;
    }
    int dec_pt = -1, mant_size;
    for (mant_size = 0;; mant_size++) {
        c = gw_ch(t, p);
        if (!gw_isdigit(c)) {
            if (c != '.' || dec_pt >= 0)
                break;
            dec_pt = mant_size;
        }
        p++;
    }
    int64_t p_exp = p;
    p -= mant_size;
    if (dec_pt < 0)
        dec_pt = mant_size;
    else
        mant_size -= 1;
    int frac_exp;
    if (mant_size > 18) {
        frac_exp = dec_pt - 18;
        mant_size = 18;
    } else {
        frac_exp = dec_pt - mant_size;
    }
    double fraction;
    if (mant_size == 0) {
        fraction = 0.0;
        return sign ? -fraction : fraction;
    }
    int frac1 = 0, frac2 = 0;
    for (; mant_size > 9; mant_size--) {
        c = gw_ch(t, p++);
        if (c == '.')
            c = gw_ch(t, p++);
        frac1 = 10 * frac1 + (c - '0');
    }
    for (; mant_size > 0; mant_size--) {
        c = gw_ch(t, p++);
        if (c == '.')
            c = gw_ch(t, p++);
        frac2 = 10 * frac2 + (c - '0');
    }
    fraction = (1.0e9 * frac1) + frac2;
    p = p_exp;
    int exp = 0;
    if (gw_ch(t, p) == 'E' || gw_ch(t, p) == 'e') {
        p++;
        if (gw_ch(t, p) == '-') {
            exp_sign = 1;
            p++;
        } else if (gw_ch(t, p) == '+') {
            p++;
        }
        while (gw_isdigit(gw_ch(t, p))) {
            if (exp < 100000)
                exp = exp * 10 + (gw_ch(t, p) - '0');
            p++;
        }
    }
    exp = exp_sign ? frac_exp - exp : frac_exp + exp;
    exp_sign = exp < 0;
    if (exp < 0)
        exp = -exp;
    if (exp > 511)
        exp = 511;
    double dbl_exp = 1.0;
    for (const double *d = powers_of_10; exp != 0; exp >>= 1, d++)
        if (exp & 1)
            dbl_exp *= *d;
    fraction = exp_sign ? fraction / dbl_exp : fraction * dbl_exp;
    return sign ? -fraction : fraction;
}

/* gpsd's DD(): two digits as a number, whatever they are. */
static int gw_dd(gw_text t, int64_t k) { return (gw_ch(t, k) - '0') * 10 + (gw_ch(t, k + 1) - '0'); }

static double gw_lat_or_lon(gw_text t)
{
    int64_t end;
    long minutes = gw_strtol(t, &end);
    if (gw_ch(t, end) != '.')
        return NAN;
    long degrees = minutes / 100;
    minutes -= degrees * (100 - 60);
    gw_text rest = {t.at + end, t.len - end};
    double full_minutes = (double)minutes + gw_atof(rest);
    return full_minutes * (1.0 / 60.0);
}

/* Latitude and longitude from fields k..k+3 into the new data; 0 when done. */
static int gw_lat_lon(gw_nmea *st, const gw_fields *fl, int k)
{
    gw_text lat_t = gw_field(fl, k), ns = gw_field(fl, k + 1);
    gw_text lon_t = gw_field(fl, k + 2), ew = gw_field(fl, k + 3);
    if (!lat_t.len || !ns.len || !lon_t.len || !ew.len)
        return 1;
    double lat = gw_lat_or_lon(lat_t);
    if (ns.at[0] == 'S')
        lat = -lat;
    double lon = gw_lat_or_lon(lon_t);
    if (ew.at[0] == 'W')
        lon = -lon;
    if (!isfinite(lat) || !isfinite(lon))
        return 2;
    st->newdata.lat = lat;
    st->newdata.lon = lon;
    return 0;
}

static int gw_faa_mode(int mode)
{
    switch (mode) {
    case 0: case 'C': case 'N': case 'S': case 'U':
        return GW_STATUS_NO_FIX;
    case 'D': case 'P':
        return GW_STATUS_DGPS_FIX;
    case 'E':
        return GW_STATUS_DR;
    case 'F':
        return GW_STATUS_RTK_FLT;
    case 'R':
        return GW_STATUS_RTK_FIX;
    default:
        return GW_STATUS_FIX;
    }
}

/* ---- time, as gpsd keeps it: a struct tm and the subseconds ---- */

static int64_t gw_mkgmtime(int32_t tm_year, int32_t tm_mon, int32_t tm_mday, int32_t hour,
                           int32_t minute, int32_t second)
{
    static const int cumdays[12] = {0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
    int64_t year = 1900 + (int64_t)tm_year + tm_mon / 12;
    int64_t result = (year - 1970) * 365 + cumdays[tm_mon % 12];
    result += (year - 1968) / 4;
    result -= (year - 1900) / 100;
    result += (year - 1600) / 400;
    if ((year % 4) == 0 && ((year % 100) != 0 || (year % 400) == 0) && (tm_mon % 12) < 2)
        result--;
    result += tm_mday - 1;
    result *= 24;
    result += hour;
    result *= 60;
    result += minute;
    result *= 60;
    result += second;
    return result;
}

static int64_t gw_floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

static void gw_civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

static int gw_merge_hhmmss(gw_nmea *st, gw_text t)
{
    int old_hour = st->hour;
    for (int i = 0; i < 6; i++)
        if (!gw_isdigit(gw_ch(t, i)))
            return 2;
    st->hour = gw_dd(t, 0);
    if (st->hour < old_hour) /* midnight wrap */
        st->mday++;
    st->minute = gw_dd(t, 2);
    st->second = gw_dd(t, 4);
    if (gw_ch(t, 6) == '.' && gw_isdigit(gw_ch(t, 7))) {
        int64_t sublen = t.len - 7;
        gw_text sub = {t.at + 7, t.len - 7};
        int i = gw_atoi(sub);
        st->subsec_nsec = (int64_t)i * (int64_t)pow(10.0, (double)(9 - sublen));
    } else {
        st->subsec_nsec = 0;
    }
    return 0;
}

static void gw_century_update(gw_nmea *st, int century)
{
    if (century > st->century)
        st->century = century;
}

static int gw_merge_ddmmyy(gw_nmea *st, gw_text t)
{
    for (int i = 0; i < 6; i++)
        if (!gw_isdigit(gw_ch(t, i)))
            return 2;
    if (t.len != 6)
        return 3;
    int yy = gw_dd(t, 4), mon = gw_dd(t, 2), mday = gw_dd(t, 0);
    if (st->year % 100 == 99 && yy == 0)
        gw_century_update(st, st->century + 100);
    int year = st->century + yy;
    if (year >= 2080)
        year -= 100;
    if (mon < 1 || mon > 12)
        return 4;
    if (mday < 1 || mday > 31)
        return 5;
    st->year = year - 1900;
    st->month = mon - 1;
    st->mday = mday;
    return 0;
}

/* (int64_t)d, with what x86-64 (and so gpsd's DTOTS there) makes of a time
 * field that is no number (NaN) or too large for one (1e300, inf):
 * INT64_MIN. C leaves those conversions undefined, and ARM saturates. */
static int64_t gw_time_int(double d)
{
    return d >= -9223372036854775808.0 && d < 9223372036854775808.0 ? (int64_t)d : INT64_MIN;
}

/* a - b, wrapping around as gpsd's time_t arithmetic does on such values */
static int64_t gw_wrap_sub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }

static void gw_register_fractional_time(gw_nmea *st, gw_text t)
{
    if (!t.len)
        return;
    st->last_frac_sec = st->this_frac_sec;
    st->last_frac_nsec = st->this_frac_nsec;
    double d = gw_atof(t), whole;
    st->this_frac_nsec = gw_time_int(modf(d, &whole) * 1e9);
    st->this_frac_sec = gw_time_int(whole);
    st->latch_frac_time = 1;
}

/* gpsd_utc_resolve, with its week-rollover correction: unless the receiver
 * said otherwise, gpsd knows 18 leap seconds, and takes a date before the
 * 18th for a receiver 1024 weeks behind. */
static void gw_utc_resolve(gw_nmea *st, int64_t *sec, int64_t *nsec)
{
    int64_t t = gw_mkgmtime(st->year, st->month, st->mday, st->hour, st->minute, st->second);
    *nsec = st->subsec_nsec;
    if (st->leap_seconds > 17 && t < GW_LEAP_18_SINCE) {
        t += GW_ROLLOVER_S;
        int64_t days = gw_floor_div(t, 86400), of_day = t - days * 86400, y, m, d;
        gw_civil_from_days(days, &y, &m, &d);
        st->year = (int32_t)(y - 1900);
        st->month = (int32_t)(m - 1);
        st->mday = (int32_t)d;
        st->hour = (int32_t)(of_day / 3600);
        st->minute = (int32_t)(of_day / 60 % 60);
        st->second = (int32_t)(of_day % 60);
    }
    *sec = t;
}

/* ---- the fix ---- */

static void gw_clear_fix(gw_gps_fix *f)
{
    memset(f, 0, sizeof *f);
    f->lat = f->lon = f->alt_hae = f->alt_msl = f->geoid_sep = f->speed = f->track = NAN;
    f->climb = f->magnetic_var = f->magnetic_track = NAN;
    f->eph = f->epx = f->epy = f->epv = f->sep = f->eps = f->epd = f->epc = f->ept = NAN;
    f->vel_n = f->vel_e = f->vel_d = NAN;
}

static void gw_merge_fix(gw_gps_fix *to, uint32_t transfer, const gw_gps_fix *from)
{
    if (transfer & GW_M_TIME) {
        to->sec = from->sec;
        to->nsec = from->nsec;
    }
    if (transfer & GW_M_LATLON) {
        to->lat = from->lat;
        to->lon = from->lon;
    }
    if (transfer & GW_M_MODE)
        to->mode = from->mode;
    if ((transfer & GW_M_STATUS) && to->status < from->status)
        to->status = from->status;
    if (transfer & GW_M_ALTITUDE) {
        if (isfinite(from->alt_hae))
            to->alt_hae = from->alt_hae;
        if (isfinite(from->alt_msl))
            to->alt_msl = from->alt_msl;
    }
    if (transfer & GW_M_TRACK)
        to->track = from->track;
    if (transfer & GW_M_MAGNETIC_TRACK) {
        if (isfinite(from->magnetic_track))
            to->magnetic_track = from->magnetic_track;
        if (isfinite(from->magnetic_var))
            to->magnetic_var = from->magnetic_var;
    }
    if (transfer & GW_M_SPEED)
        to->speed = from->speed;
    if (transfer & GW_M_CLIMB)
        to->climb = from->climb;
    if (isfinite(from->epx) && isfinite(from->epy)) {
        to->epx = from->epx;
        to->epy = from->epy;
    }
    if (isfinite(from->epd))
        to->epd = from->epd;
    if (isfinite(from->eph))
        to->eph = from->eph;
    if (isfinite(from->eps))
        to->eps = from->eps;
    if (isfinite(from->sep))
        to->sep = from->sep;
    if (isfinite(from->geoid_sep))
        to->geoid_sep = from->geoid_sep;
    if (isfinite(from->epv))
        to->epv = from->epv;
    if (transfer & GW_M_VNED) {
        to->vel_n = from->vel_n;
        to->vel_e = from->vel_e;
        to->vel_d = from->vel_d;
    }
}

/* Distance in metres on the WGS84 ellipsoid (Vincenty), as gpsd's
 * earth_distance. */
static double gw_earth_distance(double lat1, double lon1, double lat2, double lon2)
{
    const double a = 6378137.0, b = 6356752.314245, f = 1 / 298.257223563;
    double L = (lon2 - lon1) * GW_DEG_2_RAD;
    double U1 = atan((1 - f) * tan(lat1 * GW_DEG_2_RAD));
    double U2 = atan((1 - f) * tan(lat2 * GW_DEG_2_RAD));
    double s_U1 = sin(U1), c_U1 = cos(U1), s_U2 = sin(U2), c_U2 = cos(U2);
    double lambda = L, L_P, s_S, c_S, S, s_A, c_SqA, c_2SM, C;
    int i = 100;
    do {
        double s_L = sin(lambda), c_L = cos(lambda);
        s_S = sqrt((c_U2 * s_L) * (c_U2 * s_L) +
                   (c_U1 * s_U2 - s_U1 * c_U2 * c_L) * (c_U1 * s_U2 - s_U1 * c_U2 * c_L));
        if (s_S == 0)
            return 0;
        c_S = s_U1 * s_U2 + c_U1 * c_U2 * c_L;
        S = atan2(s_S, c_S);
        s_A = c_U1 * c_U2 * s_L / s_S;
        c_SqA = 1 - s_A * s_A;
        c_2SM = c_S - 2 * s_U1 * s_U2 / c_SqA;
        if (!isfinite(c_2SM))
            c_2SM = 0;
        C = f / 16 * c_SqA * (4 + f * (4 - 3 * c_SqA));
        L_P = lambda;
        lambda = L + (1 - C) * f * s_A * (S + C * s_S * (c_2SM + C * c_S * (2 * c_2SM * c_2SM - 1)));
    } while ((fabs(lambda - L_P) > 1.0e-12) && (--i > 0));
    if (i == 0)
        return NAN; /* did not converge */
    double uSq = c_SqA * ((a * a) - (b * b)) / (b * b);
    double A = 1 + uSq / 16384 * (4096 + uSq * (-768 + uSq * (320 - 175 * uSq)));
    double B = uSq / 1024 * (256 + uSq * (-128 + uSq * (74 - 47 * uSq)));
    double d_S = B * s_S * (c_2SM + B / 4 * (c_S * (-1 + 2 * c_2SM * c_2SM) -
                                             B / 6 * c_2SM * (-3 + 4 * s_S * s_S) *
                                                 (-3 + 4 * c_2SM * c_2SM)));
    return b * A * (S - d_S);
}

static void gw_error_model(gw_nmea *st)
{
    gw_gps_fix *fix = &st->fix, *lastfix = &st->lastfix, *oldfix = &st->oldfix;
    const gw_gps_fix *newfix = &st->newdata;
    double deltatime = -1.0;
    if (fix->sec > 0) {
        deltatime = (double)(fix->sec - lastfix->sec) + (double)(fix->nsec - lastfix->nsec) * 1e-9;
        if (fabs(deltatime) > 0.0099)
            *oldfix = *lastfix;
        else
            deltatime = (double)(fix->sec - oldfix->sec) + (double)(fix->nsec - oldfix->nsec) * 1e-9;
    }
    int dgps = fix->status == GW_STATUS_DGPS_FIX;
    double h_uere = dgps ? 3.75 : 15.0, v_uere = dgps ? 5.75 : 23.0, p_uere = dgps ? 4.75 : 19.0;
    if (!isfinite(fix->lat) || !isfinite(fix->lon) || fabs(fix->lat) > 90.0 ||
        fabs(fix->lon) > 180.0)
        fix->lat = fix->lon = NAN;
    if (fabs(fix->speed) > 9999.9)
        fix->speed = NAN;
    if (fabs(fix->vel_n) > 9999.9)
        fix->vel_n = NAN;
    if (fabs(fix->vel_e) > 9999.9)
        fix->vel_e = NAN;
    if (fabs(fix->vel_d) > 9999.9)
        fix->vel_d = NAN;
    if (fabs(fix->climb) > 9999.9)
        fix->climb = NAN;
    if (isfinite(fix->vel_d) && !isfinite(fix->climb))
        fix->climb = -fix->vel_d;
    if (isfinite(fix->vel_n) && isfinite(fix->vel_e)) {
        if (!isfinite(fix->speed))
            fix->speed = hypot(fix->vel_n, fix->vel_e);
        if (!isfinite(fix->track))
            fix->track = atan2(fix->vel_e, fix->vel_n) * GW_RAD_2_DEG;
    }
    if (isfinite(fix->lat) && isfinite(fix->lon)) {
        if (!isfinite(fix->geoid_sep))
            fix->geoid_sep = gw_geoid_separation(fix->lat, fix->lon);
        if (!isfinite(fix->magnetic_var) || fabs(fix->magnetic_var) <= 0.09)
            fix->magnetic_var = gw_magnetic_variation(fix->lat, fix->lon);
    }
    if (isfinite(fix->magnetic_var)) {
        if (!isfinite(fix->magnetic_track) && isfinite(fix->track))
            fix->magnetic_track = fix->track + fix->magnetic_var;
        else if (isfinite(fix->magnetic_track) && !isfinite(fix->track))
            fix->track = fix->magnetic_track - fix->magnetic_var;
    }
    if (isfinite(fix->track)) {
        if (fix->track < 0)
            fix->track += 360;
        else if (fix->track >= 360)
            fix->track -= 360;
    }
    if (isfinite(fix->geoid_sep)) {
        if (isfinite(fix->alt_hae) && !isfinite(fix->alt_msl))
            fix->alt_msl = fix->alt_hae - fix->geoid_sep;
        else if (!isfinite(fix->alt_hae) && isfinite(fix->alt_msl))
            fix->alt_hae = fix->alt_msl + fix->geoid_sep;
    }
    if (deltatime > 0 && fix->mode >= GW_MODE_2D && oldfix->mode >= GW_MODE_2D) {
        if (!isfinite(fix->speed)) {
            fix->speed = gw_earth_distance(fix->lat, fix->lon, oldfix->lat, oldfix->lon) /
                         deltatime;
            if (fabs(fix->speed) > 9999.9)
                fix->speed = NAN;
        }
        if (fix->mode >= GW_MODE_3D && oldfix->mode >= GW_MODE_3D && !isfinite(fix->climb) &&
            isfinite(fix->alt_hae) && isfinite(oldfix->alt_hae)) {
            fix->climb = (fix->alt_hae - oldfix->alt_hae) / deltatime;
            if (fabs(fix->climb) > 9999.9)
                fix->climb = NAN;
        }
    }
    if (fix->sec > 0 && !isfinite(fix->ept))
        fix->ept = 0.005;
    if (fix->mode >= GW_MODE_2D) {
        if (!isfinite(newfix->epx) && isfinite(st->xdop))
            fix->epx = st->xdop * h_uere;
        if (!isfinite(newfix->epy) && isfinite(st->ydop))
            fix->epy = st->ydop * h_uere;
        if (fix->mode >= GW_MODE_3D && !isfinite(fix->epv) && isfinite(st->vdop))
            fix->epv = st->vdop * v_uere;
        if (!isfinite(fix->eph) && isfinite(st->hdop))
            fix->eph = st->hdop * p_uere;
        if (!isfinite(fix->sep) && isfinite(st->pdop))
            fix->sep = st->pdop * p_uere;
    }
    if (fix->sec > 0)
        *lastfix = *fix;
}

/* gpsd's matrix_invert: the diagonal of the inverse of a 4x4 matrix. */
static int gw_invert_diagonal(double m[4][4], double inv[4])
{
    double d2_12_01 = m[1][0] * m[2][1] - m[1][1] * m[2][0];
    double d2_12_02 = m[1][0] * m[2][2] - m[1][2] * m[2][0];
    double d2_12_12 = m[1][1] * m[2][2] - m[1][2] * m[2][1];
    double d2_13_01 = m[1][0] * m[3][1] - m[1][1] * m[3][0];
    double d2_13_03 = m[1][0] * m[3][3] - m[1][3] * m[3][0];
    double d2_13_13 = m[1][1] * m[3][3] - m[1][3] * m[3][1];
    double d2_23_01 = m[2][0] * m[3][1] - m[2][1] * m[3][0];
    double d2_23_02 = m[2][0] * m[3][2] - m[2][2] * m[3][0];
    double d2_23_03 = m[2][0] * m[3][3] - m[2][3] * m[3][0];
    double d2_23_12 = m[2][1] * m[3][2] - m[2][2] * m[3][1];
    double d2_23_13 = m[2][1] * m[3][3] - m[2][3] * m[3][1];
    double d2_23_23 = m[2][2] * m[3][3] - m[2][3] * m[3][2];
    double d3_012_012 = m[0][0] * d2_12_12 - m[0][1] * d2_12_02 + m[0][2] * d2_12_01;
    double d3_013_013 = m[0][0] * d2_13_13 - m[0][1] * d2_13_03 + m[0][3] * d2_13_01;
    double d3_023_023 = m[0][0] * d2_23_23 - m[0][2] * d2_23_03 + m[0][3] * d2_23_02;
    double d3_123_012 = m[1][0] * d2_23_12 - m[1][1] * d2_23_02 + m[1][2] * d2_23_01;
    double d3_123_013 = m[1][0] * d2_23_13 - m[1][1] * d2_23_03 + m[1][3] * d2_23_01;
    double d3_123_023 = m[1][0] * d2_23_23 - m[1][2] * d2_23_03 + m[1][3] * d2_23_02;
    double d3_123_123 = m[1][1] * d2_23_23 - m[1][2] * d2_23_13 + m[1][3] * d2_23_12;
    double det = m[0][0] * d3_123_123 - m[0][1] * d3_123_023 + m[0][2] * d3_123_013 -
                 m[0][3] * d3_123_012;
    if (fabs(det) < 0.0001)
        return 0;
    inv[0] = d3_123_123 / det;
    inv[1] = d3_023_023 / det;
    inv[2] = d3_013_013 / det;
    inv[3] = d3_012_012 / det;
    return 1;
}

/* sin and cos of whole degrees, as sin(x * GW_DEG_2_RAD) gives them:
 * satellites' azimuths and elevations are whole degrees (gpsd reads them
 * with atoi), so fill_dop's trigonometry can be looked up. */
static double gw_sin_deg[451], gw_cos_deg[451]; /* -90 to 360 degrees */
static int gw_trig_ready;

static void gw_trig_init(void)
{
    if (gw_trig_ready)
        return;
    for (int k = 0; k < 451; k++) {
        gw_sin_deg[k] = sin((k - 90) * GW_DEG_2_RAD);
        gw_cos_deg[k] = cos((k - 90) * GW_DEG_2_RAD);
    }
    gw_trig_ready = 1;
}

static double gw_sin(double degrees)
{
    double k = degrees + 90;
    return k == (int)k && k >= 0 && k < 451 ? gw_sin_deg[(int)k] : sin(degrees * GW_DEG_2_RAD);
}

static double gw_cos(double degrees)
{
    double k = degrees + 90;
    return k == (int)k && k >= 0 && k < 451 ? gw_cos_deg[(int)k] : cos(degrees * GW_DEG_2_RAD);
}

/* DOPs from the geometry of the satellites used, where the receiver gave
 * none (gpsd's fill_dop). */
static void gw_fill_dop(gw_nmea *st)
{
    double satpos[GW_NMEA_CHANNELS][4];
    int n = 0;
    for (int k = 0; k < st->satellites_visible; k++) {
        const gw_sat *sp = &st->skyview[k];
        if (!sp->used || sp->prn < 1)
            continue;
        if (!isfinite(sp->azimuth) || sp->azimuth < 0 || sp->azimuth > 359)
            continue;
        if (!isfinite(sp->elevation) || fabs(sp->elevation) > 90)
            continue;
        satpos[n][0] = gw_sin(sp->azimuth) * gw_cos(sp->elevation);
        satpos[n][1] = gw_cos(sp->azimuth) * gw_cos(sp->elevation);
        satpos[n][2] = gw_sin(sp->elevation);
        satpos[n][3] = 1;
        n++;
    }
    if (n < 4)
        return;
    double prod[4][4], inv[4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            prod[i][j] = 0.0;
            for (int k = 0; k < n; ++k)
                prod[i][j] += satpos[k][i] * satpos[k][j];
        }
    if (!gw_invert_diagonal(prod, inv))
        return;
    double xdop = sqrt(inv[0]), ydop = sqrt(inv[1]), hdop = sqrt(inv[0] + inv[1]);
    double vdop = sqrt(inv[2]), pdop = sqrt(inv[0] + inv[1] + inv[2]), tdop = sqrt(inv[3]);
    double gdop = sqrt(inv[0] + inv[1] + inv[2] + inv[3]);
    if (!isfinite(st->xdop))
        st->xdop = xdop;
    if (!isfinite(st->ydop))
        st->ydop = ydop;
    if (!isfinite(st->hdop))
        st->hdop = hdop;
    if (!isfinite(st->vdop))
        st->vdop = vdop;
    if (!isfinite(st->pdop))
        st->pdop = pdop;
    if (!isfinite(st->tdop))
        st->tdop = tdop;
    if (!isfinite(st->gdop))
        st->gdop = gdop;
}

/* gpsd's gpsd_zero_satellites. Only the satellites in view are read, and a
 * satellite is written whole before it counts as in view, so clearing those
 * is enough. */
static void gw_zero_satellites(gw_nmea *st)
{
    for (int k = 0; k < st->satellites_visible; k++) {
        memset(&st->skyview[k], 0, sizeof st->skyview[k]);
        st->skyview[k].azimuth = st->skyview[k].elevation = st->skyview[k].ss = NAN;
    }
    st->satellites_visible = 0;
}

/* gpsd's nmeaid_to_prn: the satellite number in gpsd's extended PRN space. */
static int gw_prn(const char *talker, int satnum, int gnssid)
{
    int prn = satnum;
    if (satnum < 1)
        return 0;
    if (gnssid > 0) {
        switch (gnssid) {
        case 1:
            if (satnum < 33 || satnum < 65 || satnum < 137)
                return prn;
            if (satnum < 152)
                return 0;
            if (satnum < 158)
                return prn;
            if (satnum < 193)
                return 0;
            return satnum < 265 ? prn : 0;
        case 2:
            return 64 + (satnum < 64 ? satnum : satnum - 64);
        case 3:
            return 300 + (satnum < 100 ? satnum : satnum - 100);
        case 4:
            return 400 + (satnum < 100 ? satnum : satnum - 200);
        case 5:
            return 192 + (satnum < 100 ? satnum : satnum - 192);
        case 6:
            return satnum + 500;
        default:
            return 0;
        }
    }
    if (satnum <= 32) {
        switch (talker[0]) {
        case 'G':
            switch (talker[1]) {
            case 'A': return 300 + satnum;
            case 'B': return 400 + satnum;
            case 'I': return 500 + satnum;
            case 'L': return 64 + satnum;
            case 'Q': return 192 + satnum;
            default: return prn;
            }
        case 'B':
            return talker[1] == 'D' ? 400 + satnum : prn;
        case 'P':
            return talker[1] == 'Q' ? 400 + satnum : prn;
        case 'Q':
            return talker[1] == 'Z' ? 192 + satnum : prn;
        default:
            return prn;
        }
    }
    if (satnum <= 64 || satnum <= 96)
        return prn;
    if (satnum < 120)
        return 0;
    if (satnum <= 158)
        return prn;
    if (satnum < 173)
        return 0;
    if (satnum <= 182)
        return prn;
    if (satnum < 193)
        return 0;
    if (satnum <= 197)
        return prn;
    if (satnum < 201)
        return 0;
    if (satnum <= 237)
        return prn + 200;
    if (satnum < 301)
        return 0;
    if (satnum <= 356)
        return prn;
    if (satnum < 401)
        return 0;
    return satnum <= 437 ? prn : 0;
}

/* The constellations gpsd tells apart by talker, as bits for seen_gsa/gsv. */
static int gw_talker_bit(char c)
{
    switch (c) {
    case 'A': return 1 << 0;
    case 'B': case 'D': return 1 << 1;
    case 'I': return 1 << 2;
    case 'L': return 1 << 3;
    case 'N': return 1 << 4;
    case 'Q': case 'Z': return 1 << 5;
    case 'P': return 1 << 6;
    default: return 0;
    }
}
#define GW_SEEN_NOT_GPS 0x3f /* any talker but GP */

static int gw_talker_gnssid(char c)
{
    switch (c) {
    case 'A': return 3;
    case 'B': case 'D': return 4;
    case 'I': return 6;
    case 'L': return 2;
    case 'Q': case 'Z': return 5;
    default: return 0;
    }
}

/* ---- the sentences ---- */

typedef struct {
    gw_nmea *st;
    const gw_fields *fl;
    char talker[2];
} gw_sentence;

#define FLD(k) gw_field(x->fl, (k))
#define CH(k) gw_ch(gw_field(x->fl, (k)), 0)

static uint32_t gw_rmc(gw_sentence *x)
{
    gw_nmea *st = x->st;
    int count = x->fl->count;
    uint32_t mask = GW_M_ONLINE;
    int newstatus = GW_STATUS_NO_FIX;
    switch (CH(2)) {
    default:
        st->newdata.mode = GW_MODE_NO_FIX;
        if (!FLD(1).len || !FLD(9).len) {
            /* no time: report at once, the cycle's end is unknown */
            st->year = st->month = st->mday = st->hour = st->minute = st->second = 0;
            st->cycle_end_reliable = 0;
            mask |= GW_M_REPORT | GW_M_TIME;
        }
        mask |= GW_M_STATUS | GW_M_MODE;
        break;
    case 'D':
    case 'A':
        if (FLD(1).len && count > 9 && FLD(9).len) {
            if (gw_merge_hhmmss(st, FLD(1)) == 0 && gw_merge_ddmmyy(st, FLD(9)) == 0) {
                mask |= GW_M_TIME;
                gw_register_fractional_time(st, FLD(1));
            }
        }
        if (gw_lat_lon(st, x->fl, 3) == 0) {
            newstatus = CH(2) == 'D' ? GW_STATUS_DGPS_FIX : GW_STATUS_FIX;
            mask |= GW_M_LATLON;
            if (st->lastfix.mode <= GW_MODE_2D) {
                st->newdata.mode = GW_MODE_2D;
                mask |= GW_M_MODE;
            } else if (st->lastfix.mode == GW_MODE_3D) {
                st->newdata.mode = GW_MODE_3D;
                mask |= GW_M_MODE;
            }
        } else {
            newstatus = GW_STATUS_NO_FIX;
            st->newdata.mode = GW_MODE_NO_FIX;
            mask |= GW_M_MODE;
        }
        if (FLD(7).len) {
            st->newdata.speed = gw_atof(FLD(7)) * GW_KNOTS_TO_MPS;
            mask |= GW_M_SPEED;
        }
        if (FLD(8).len) {
            st->newdata.track = gw_atof(FLD(8));
            mask |= GW_M_TRACK;
        }
        if (FLD(10).len && FLD(11).len) {
            double var = gw_atof(FLD(10));
            if (CH(11) == 'W')
                var = -var;
            else if (CH(11) != 'E')
                var = NAN;
            if (!isfinite(var) || fabs(var) <= 0.09) {
                st->newdata.magnetic_var = NAN;
            } else {
                st->newdata.magnetic_var = var;
                mask |= GW_M_MAGNETIC_TRACK;
            }
        }
        if (count >= 12)
            newstatus = gw_faa_mode(CH(12));
        if (st->satellites_used > 3) {
            st->newdata.mode = GW_MODE_3D;
            mask |= GW_M_MODE;
        } else if (isfinite(st->fix.alt_hae) || isfinite(st->fix.alt_msl)) {
            st->newdata.mode = GW_MODE_3D;
            mask |= GW_M_MODE;
        }
        st->newdata.status = newstatus;
        mask |= GW_M_STATUS;
    }
    return mask;
}

static uint32_t gw_gll(gw_sentence *x)
{
    gw_nmea *st = x->st;
    int count = x->fl->count;
    uint32_t mask = GW_M_ONLINE;
    if (FLD(5).len && gw_merge_hhmmss(st, FLD(5)) == 0) {
        gw_register_fractional_time(st, FLD(5));
        if (st->year != 0)
            mask = GW_M_TIME;
    }
    if (!FLD(6).len || CH(6) == 'V') {
        st->newdata.status = GW_STATUS_NO_FIX;
        st->newdata.mode = GW_MODE_NO_FIX;
    } else if (CH(6) == 'A' && (count < 8 || CH(7) != 'N') && gw_lat_lon(st, x->fl, 1) == 0) {
        mask |= GW_M_LATLON;
        int newstatus = count >= 8 ? gw_faa_mode(CH(7)) : GW_STATUS_FIX;
        if (isfinite(st->fix.alt_hae) || isfinite(st->fix.alt_msl))
            st->newdata.mode = GW_MODE_3D;
        else if (st->satellites_used > 3)
            st->newdata.mode = GW_MODE_3D;
        else if (st->fix.mode < GW_MODE_2D ||
                 (!isfinite(st->oldfix.alt_hae) && !isfinite(st->oldfix.alt_msl)))
            st->newdata.mode = GW_MODE_2D;
        st->newdata.status = newstatus;
    } else {
        st->newdata.status = GW_STATUS_NO_FIX;
        st->newdata.mode = GW_MODE_NO_FIX;
    }
    return mask | GW_M_STATUS | GW_M_MODE;
}

static uint32_t gw_gns(gw_sentence *x)
{
    gw_nmea *st = x->st;
    uint32_t mask = GW_M_ONLINE;
    if (FLD(1).len && gw_merge_hhmmss(st, FLD(1)) == 0) {
        gw_register_fractional_time(st, FLD(1));
        if (st->year != 0)
            mask = GW_M_TIME;
    }
    if (!FLD(6).len || CH(6) == 'N') {
        st->newdata.mode = GW_MODE_NO_FIX;
        return mask | GW_M_MODE;
    }
    if (CH(13) == 'U' || CH(13) == 'V')
        return mask;
    int satellites_used = gw_atoi(FLD(7));
    if (gw_lat_lon(st, x->fl, 2) == 0) {
        mask |= GW_M_LATLON;
        st->newdata.mode = GW_MODE_2D;
        if (FLD(9).len) {
            st->newdata.alt_msl = gw_atof(FLD(9));
            if (isfinite(st->newdata.alt_msl)) {
                mask |= GW_M_ALTITUDE;
                if (satellites_used > 3)
                    st->newdata.mode = GW_MODE_3D;
            }
            if (FLD(10).len)
                st->newdata.geoid_sep = gw_atof(FLD(10));
        }
    } else {
        st->newdata.mode = GW_MODE_NO_FIX;
        mask |= GW_M_MODE;
    }
    if (FLD(8).len)
        st->hdop = gw_atof(FLD(8));
    st->newdata.status = gw_faa_mode(CH(6));
    return mask | GW_M_MODE | GW_M_STATUS;
}

static uint32_t gw_gga(gw_sentence *x)
{
    gw_nmea *st = x->st;
    uint32_t mask = GW_M_ONLINE;
    char last_last_gga_talker = st->last_gga_talker;
    st->last_gga_talker = x->talker[1];
    int fix = FLD(6).len ? gw_atoi(FLD(6)) : -1;
    static const int statuses[] = {GW_STATUS_NO_FIX, GW_STATUS_FIX, GW_STATUS_DGPS_FIX,
                                   GW_STATUS_PPS_FIX, GW_STATUS_RTK_FIX, GW_STATUS_RTK_FLT,
                                   GW_STATUS_DR, GW_STATUS_TIME, GW_STATUS_SIM};
    int newstatus = fix >= 0 && fix <= 8 ? statuses[fix] : -1;
    if (fix == 0 && !FLD(1).len) {
        st->year = st->month = st->mday = st->hour = st->minute = st->second = 0;
        st->cycle_end_reliable = 0;
        mask |= GW_M_REPORT | GW_M_TIME;
    }
    if (newstatus >= 0) {
        st->newdata.status = newstatus;
        mask = GW_M_STATUS; /* sic: what the no-time case set goes */
    }
    gw_text stamp = FLD(1);
    if (last_last_gga_talker && last_last_gga_talker != st->last_gga_talker) {
        st->latch_mode = 0;
    } else {
        st->latch_mode = stamp.len < (int64_t)sizeof st->last_gga_timestamp &&
                         (int64_t)strlen(st->last_gga_timestamp) == stamp.len &&
                         memcmp(st->last_gga_timestamp, stamp.at, (size_t)stamp.len) == 0;
    }
    if (st->latch_mode) {
        st->newdata.status = GW_STATUS_NO_FIX;
        st->newdata.mode = GW_MODE_NO_FIX;
        mask |= GW_M_MODE | GW_M_STATUS;
    } else {
        int64_t n = stamp.len < 15 ? stamp.len : 15;
        memcpy(st->last_gga_timestamp, stamp.at, (size_t)n);
        st->last_gga_timestamp[n] = 0;
    }
    int satellites_visible = gw_atoi(FLD(7));
    if (FLD(1).len && gw_merge_hhmmss(st, FLD(1)) == 0) {
        gw_register_fractional_time(st, FLD(1));
        if (st->year != 0)
            mask |= GW_M_TIME;
    }
    if (gw_lat_lon(st, x->fl, 2) == 0) {
        st->newdata.mode = GW_MODE_2D;
        mask |= GW_M_LATLON;
        st->newdata.geoid_sep = FLD(11).len
                                    ? gw_atof(FLD(11))
                                    : gw_geoid_separation(st->newdata.lat, st->newdata.lon);
        if (FLD(9).len) {
            st->newdata.alt_msl = gw_atof(FLD(9));
            mask |= GW_M_ALTITUDE;
            if (satellites_visible >= 4)
                st->newdata.mode = GW_MODE_3D;
        }
        if (satellites_visible < 3)
            st->newdata.mode = GW_MODE_NO_FIX;
    } else {
        st->newdata.mode = GW_MODE_NO_FIX;
    }
    mask |= GW_M_MODE;
    if (FLD(8).len)
        st->hdop = gw_atof(FLD(8));
    return mask;
}

static uint32_t gw_vtg(gw_sentence *x)
{
    gw_nmea *st = x->st;
    if (!FLD(1).len || !FLD(5).len)
        return GW_M_ONLINE;
    if (x->fl->count > 9 && (CH(9) == 'E' || CH(9) == 'N'))
        return GW_M_ONLINE;
    uint32_t mask = GW_M_ONLINE | GW_M_TRACK | GW_M_SPEED;
    st->newdata.track = gw_atof(FLD(1));
    if (FLD(3).len) {
        st->newdata.magnetic_track = gw_atof(FLD(3));
        mask |= GW_M_MAGNETIC_TRACK;
    }
    st->newdata.speed = gw_atof(FLD(5)) * GW_KNOTS_TO_MPS;
    return mask;
}

static uint32_t gw_gsa(gw_sentence *x)
{
    gw_nmea *st = x->st;
    int count = x->fl->count;
    uint32_t mask = GW_M_ONLINE;
    char last_last_gsa_talker = st->last_gsa_talker;
    char talker = x->talker[1];
    if (count < 18 || st->latch_mode) {
        /* malformed, or the last GGA's time did not advance */
    } else {
        st->newdata.mode = gw_atoi(FLD(2));
        if (CH(2) != 'E')
            mask = GW_M_MODE;
        if (count <= 19) {
            if (FLD(15).len)
                st->pdop = gw_atof(FLD(15));
            if (FLD(16).len)
                st->hdop = gw_atof(FLD(16));
            if (FLD(17).len)
                st->vdop = gw_atof(FLD(17));
        }
        if (!st->last_gsa_talker || (talker == st->last_gsa_talker && talker != 'N')) {
            st->satellites_used = 0;
            memset(st->sats_used, 0, sizeof st->sats_used);
        }
        st->last_gsa_talker = talker;
        st->seen_gsa |= gw_talker_bit(talker);
        int gnssid = gw_talker_gnssid(talker);
        for (int i = 0; i < count - 6; i++) {
            int satnum = gw_atoi(FLD(i + 3));
            if (satnum < 1)
                continue;
            int prn = gw_prn(x->talker, satnum, gnssid);
            if (prn > 0) {
                if (st->satellites_used >= GW_NMEA_CHANNELS)
                    break;
                st->sats_used[st->satellites_used++] = (uint16_t)prn;
            }
        }
        mask |= GW_M_DOP | GW_M_USED;
    }
    if ((st->seen_gsa & GW_SEEN_NOT_GPS) && talker == 'P')
        mask = GW_M_ONLINE;
    else if (last_last_gsa_talker != 'N' && talker == 'N')
        mask = GW_M_ONLINE | GW_M_MODE;
    return mask;
}

static uint32_t gw_gsv(gw_sentence *x)
{
    gw_nmea *st = x->st;
    int count = x->fl->count;
    char talker = x->talker[1];
    int sigid = 0, gnssid = 0;
    if (count <= 3) {
        gw_zero_satellites(st);
        return GW_M_ONLINE;
    }
    switch (count % 4) {
    case 0:
        break;
    case 1:
        sigid = gw_atoi(FLD(count - 1));
        break;
    default:
        gw_zero_satellites(st);
        return GW_M_ONLINE;
    }
    /* gpsd's sigid to u-blox's: only "L1, or unknown" matters here */
    int ubx_sigid_zero = sigid <= 1 || sigid == 7 || sigid == 4 || sigid > 7;
    st->gsv_await = gw_atoi(FLD(1));
    if ((st->gsv_part = gw_atoi(FLD(2))) < 1) {
        gw_zero_satellites(st);
        return GW_M_ONLINE;
    }
    if (st->gsv_part == 1) {
        if (!st->last_gsv_talker || (talker == 'P' && ubx_sigid_zero))
            gw_zero_satellites(st);
        st->last_gsv_talker = talker;
        gnssid = gw_talker_gnssid(talker);
        st->seen_gsv |= gw_talker_bit(talker);
    }
    for (int k = 4; k < count / 4 * 4;) {
        if (st->satellites_visible >= GW_NMEA_CHANNELS) {
            gw_zero_satellites(st);
            break;
        }
        gw_sat *sp = &st->skyview[st->satellites_visible];
        int svid = gw_atoi(FLD(k++));
        if (svid == 0)
            continue;
        sp->prn = gw_prn(x->talker, svid, gnssid);
        sp->elevation = (double)gw_atoi(FLD(k++));
        sp->azimuth = (double)gw_atoi(FLD(k++));
        sp->ss = (double)gw_atoi(FLD(k++));
        sp->used = 0;
        /* past satellites_used, sats_used holds zeros: no PRN */
        if (sp->prn > 0 && sp->ss > 0)
            for (int n = 0; n < st->satellites_used; n++)
                if (st->sats_used[n] == (uint16_t)sp->prn) {
                    sp->used = 1;
                    break;
                }
        st->satellites_visible++;
    }
    if (st->gsv_part < st->gsv_await)
        return GW_M_ONLINE;
    int sane = 0;
    for (int n = 0; n < st->satellites_visible; n++)
        sane |= st->skyview[n].azimuth != 0;
    if (!sane) {
        gw_zero_satellites(st);
        return GW_M_ONLINE;
    }
    if ((st->seen_gsv & GW_SEEN_NOT_GPS) && talker == 'P')
        return GW_M_ONLINE;
    st->xdop = st->ydop = st->tdop = st->gdop = NAN;
    return GW_M_SATELLITE;
}

static uint32_t gw_zda(gw_sentence *x)
{
    gw_nmea *st = x->st;
    if (!FLD(1).len || !FLD(2).len || !FLD(3).len || !FLD(4).len)
        return GW_M_ONLINE;
    if (gw_merge_hhmmss(st, FLD(1)))
        return GW_M_ONLINE;
    int year = gw_atoi(FLD(4)), mon = gw_atoi(FLD(3)), mday = gw_atoi(FLD(2));
    if (year < 1900 || year > 2200 || mon < 1 || mon > 12 || mday < 1 || mday > 31)
        return GW_M_ONLINE;
    gw_century_update(st, year - year % 100);
    st->year = year - 1900;
    st->month = mon - 1;
    st->mday = mday;
    return GW_M_TIME;
}

static uint32_t gw_gst(gw_sentence *x)
{
    /* gpsd keeps GST in its own report, not in TPV */
    return GW_M_GST | GW_M_ONLINE;
}

static uint32_t gw_gbs(gw_sentence *x)
{
    gw_nmea *st = x->st;
    gw_text t = FLD(1);
    gw_register_fractional_time(st, t);
    if (st->hour == gw_dd(t, 0) && st->minute == gw_dd(t, 2) && st->second == gw_dd(t, 4)) {
        st->newdata.epy = gw_atof(FLD(2));
        st->newdata.epx = gw_atof(FLD(3));
        st->newdata.epv = gw_atof(FLD(4));
        return GW_M_HERR | GW_M_VERR;
    }
    return GW_M_ONLINE;
}

static uint32_t gw_pgrme(gw_sentence *x)
{
    gw_nmea *st = x->st;
    if (CH(2) != 'M' || CH(4) != 'M' || CH(6) != 'M')
        return GW_M_ONLINE;
    st->newdata.epx = st->newdata.epy = gw_atof(FLD(1)) * (1 / sqrt(2)) * GW_CONFIDENCE_PER_CEP50;
    st->newdata.epv = gw_atof(FLD(3)) * GW_CONFIDENCE_PER_CEP50;
    st->newdata.sep = gw_atof(FLD(5)) * GW_CONFIDENCE_PER_CEP50;
    return GW_M_HERR | GW_M_VERR | GW_M_PERR;
}

/* Garmin's fix type digits: no fix, 2D, 3D from no_fix on. */
static uint32_t gw_digit_mode(gw_nmea *st, int c, int no_fix)
{
    if (c < no_fix || c > no_fix + 2)
        return 0;
    st->newdata.mode = GW_MODE_NO_FIX + (c - no_fix);
    return GW_M_MODE;
}

static uint32_t gw_pgrmz(gw_sentence *x)
{
    gw_nmea *st = x->st;
    uint32_t mask = GW_M_ONLINE;
    if (CH(2) == 'f' && FLD(1).len) {
        st->newdata.alt_msl = gw_atoi(FLD(1)) * GW_FEET_TO_METERS;
        mask |= GW_M_ALTITUDE;
    }
    return mask | gw_digit_mode(st, CH(3), '1');
}

static uint32_t gw_psrfepe(gw_sentence *x)
{
    gw_nmea *st = x->st;
    uint32_t mask = GW_M_STATUS;
    if (FLD(1).len && gw_merge_hhmmss(st, FLD(1)) == 0) {
        gw_register_fractional_time(st, FLD(1));
        if (st->year != 0)
            mask |= GW_M_TIME;
    }
    if (CH(2) != 'A')
        return mask;
    if (FLD(3).len) {
        st->hdop = gw_atof(FLD(3));
        mask |= GW_M_DOP;
    }
    if (FLD(4).len) {
        st->newdata.eph = gw_atof(FLD(4));
        mask |= GW_M_HERR;
    }
    if (FLD(5).len) {
        st->newdata.epv = gw_atof(FLD(5));
        mask |= GW_M_VERR;
    }
    if (FLD(6).len)
        st->newdata.eps = gw_atof(FLD(6));
    if (FLD(7).len)
        st->newdata.epd = gw_atof(FLD(7));
    return mask;
}

static uint32_t gw_pmgnst(gw_sentence *x)
{
    gw_nmea *st = x->st;
    int newmode = gw_atoi(FLD(3));
    if (CH(4) == 'T')
        st->newdata.mode = newmode == 2 ? GW_MODE_2D : newmode == 3 ? GW_MODE_3D : GW_MODE_NO_FIX;
    else
        st->newdata.mode = GW_MODE_NO_FIX;
    return GW_M_ONLINE | GW_M_MODE;
}

/* SkyTraq's $PSTI: only 030 (position, velocity) carries a fix. */
static uint32_t gw_psti(gw_sentence *x)
{
    gw_nmea *st = x->st;
    uint32_t mask = GW_M_ONLINE;
    if (!gw_is(FLD(1), "030") || x->fl->count != 16)
        return mask;
    if (CH(3) == 'V' || CH(13) == 'N') {
        st->newdata.status = GW_STATUS_NO_FIX;
        st->newdata.mode = GW_MODE_NO_FIX;
        mask |= GW_M_MODE | GW_M_STATUS;
    } else if (CH(3) == 'A') {
        if (FLD(2).len && FLD(12).len && gw_merge_hhmmss(st, FLD(2)) == 0 &&
            gw_merge_ddmmyy(st, FLD(12)) == 0) {
            mask |= GW_M_TIME;
            gw_register_fractional_time(st, FLD(2));
        }
        if (gw_lat_lon(st, x->fl, 4) == 0) {
            st->newdata.mode = GW_MODE_2D;
            mask |= GW_M_LATLON;
            if (FLD(8).len) {
                st->newdata.alt_msl = gw_atof(FLD(8));
                mask |= GW_M_ALTITUDE;
                st->newdata.mode = GW_MODE_3D;
            }
            mask |= GW_M_MODE;
        }
        st->newdata.vel_n = gw_atof(FLD(10));
        st->newdata.vel_e = gw_atof(FLD(9));
        st->newdata.vel_d = -gw_atof(FLD(11));
        mask |= GW_M_VNED | GW_M_STATUS;
        st->newdata.status = gw_faa_mode(CH(13));
    }
    return mask;
}

/* Garmin's fix data. Its GPS week and time of week give way, in gpsd, to
 * the date and time the last sentences left; what it adds is the leap
 * seconds, a position, mode, speed, track and DOPs. */
static uint32_t gw_pgrmf(gw_sentence *x)
{
    gw_nmea *st = x->st;
    uint32_t mask = GW_M_ONLINE;
    if (gw_isdigit(CH(5)))
        st->leap_seconds = gw_atoi(FLD(5));
    if (gw_isdigit(CH(1)) && gw_isdigit(CH(2)) && st->leap_seconds > 0)
        mask |= GW_M_TIME;
    else if (gw_merge_hhmmss(st, FLD(4)) == 0 && gw_merge_ddmmyy(st, FLD(3)) == 0)
        mask |= GW_M_TIME;
    if (CH(10) != 'A')
        return mask;
    if (gw_lat_lon(st, x->fl, 6) == 0)
        mask |= GW_M_LATLON;
    mask |= gw_digit_mode(st, CH(11), '0');
    st->newdata.speed = gw_atof(FLD(12)) / GW_MPS_TO_KPH;
    st->newdata.track = gw_atof(FLD(13));
    st->pdop = gw_atof(FLD(14));
    st->tdop = gw_atof(FLD(15));
    return mask | GW_M_SPEED | GW_M_TRACK | GW_M_DOP;
}

#undef FLD
#undef CH

static uint32_t (*const gw_handlers[])(gw_sentence *) = {
    gw_gga, gw_rmc, gw_gns, gw_gll, gw_vtg, gw_gsa, gw_gsv, gw_zda, gw_gst, gw_gbs,
    gw_pgrme, gw_pgrmz, gw_psrfepe, gw_pmgnst, gw_psti, gw_pgrmf,
};

/* ---- reports ---- */

/* Python's round(x, digits), which rounds the exact binary value half to
 * even, as printf's %.*f does. Scaling decides it unless the scaled value
 * lies within its rounding error of a tie; then the correctly rounded
 * decimal conversion does. From 2^52 on every double is a whole number,
 * its own rounding (and its %.*f, up to 309 digits, would not fit). */
static double gw_round(double x, int digits)
{
    static const double powers[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    if (digits < 0 || !isfinite(x) || fabs(x) >= 4503599627370496.0)
        return x;
    double p = powers[digits];
    double y = x * p;
    if (fabs(y) < 1e15) {
        double frac = fabs(y - trunc(y));
        if (fabs(frac - 0.5) > 4e-16 * fabs(y) + 1e-300)
            return nearbyint(y) / p;
    }
    char text[64];
    snprintf(text, sizeof text, "%.*f", digits, x);
    return strtod(text, NULL);
}

/* The fix as gpsd's TPV shows it: position and what goes with it only from
 * a 2D fix on, climb and geoidSep from a 3D fix, status from DGPS on. */
static void gw_report(gw_nmea *st, gw_fix *out, int64_t *count)
{
    const gw_gps_fix *f = &st->fix;
    gw_fix *fix = &out[*count];
    uint32_t present = 0;
    double values[GW_FIX_FIELDS];
#define PUT(k, v)                                                                              \
    do {                                                                                       \
        double value_ = (v);                                                                   \
        if (isfinite(value_)) {                                                                \
            values[k] = value_;                                                                \
            present |= 1u << (k);                                                              \
        }                                                                                      \
    } while (0)
    if (f->status >= GW_STATUS_DGPS_FIX)
        PUT(GW_F_STATUS, (double)f->status);
    if (f->mode >= GW_MODE_2D) {
        PUT(GW_F_LAT, f->lat);
        PUT(GW_F_LON, f->lon);
        PUT(GW_F_ALT_HAE, f->alt_hae);
        PUT(GW_F_ALT_MSL, f->alt_msl);
        PUT(GW_F_EPX, f->epx);
        PUT(GW_F_EPY, f->epy);
        PUT(GW_F_EPV, f->epv);
        PUT(GW_F_TRACK, f->track);
        PUT(GW_F_MAGVAR, f->magnetic_var);
        PUT(GW_F_SPEED, f->speed);
        if (f->mode >= GW_MODE_3D) {
            PUT(GW_F_CLIMB, f->climb);
            PUT(GW_F_GEOID_SEP, f->geoid_sep);
        }
        PUT(GW_F_EPH, f->eph);
    }
#undef PUT
    memset(fix->time, 0, GW_FIX_TIME_LEN);
    if (f->sec > 0) {
        int64_t sec = f->sec, nsec = f->nsec;
        if (nsec > 999499999) {
            sec++;
            nsec = 0;
        }
        int64_t days = gw_floor_div(sec, 86400), of_day = sec - days * 86400, y, m, d;
        gw_civil_from_days(days, &y, &m, &d);
        int64_t ms = (nsec + 500000) / 1000000;
        if (y >= 0 && y <= 9999 && ms >= 0 && ms <= 999) {
            /* YYYY-MM-DDTHH:MM:SS.mmmZ, digit by digit (snprintf is slow) */
            const int64_t parts[] = {y / 100, y % 100, m, d, of_day / 3600, of_day / 60 % 60,
                                     of_day % 60};
            static const int at[] = {0, 2, 5, 8, 11, 14, 17};
            memcpy(fix->time, "0000-00-00T00:00:00.000Z", GW_FIX_TIME_LEN);
            for (int i = 0; i < 7; i++) {
                fix->time[at[i]] = (char)('0' + parts[i] / 10);
                fix->time[at[i] + 1] = (char)('0' + parts[i] % 10);
            }
            fix->time[20] = (char)('0' + ms / 100);
            fix->time[21] = (char)('0' + ms / 10 % 10);
            fix->time[22] = (char)('0' + ms % 10);
        }
    }
    fix->offset = st->cycle_offset;
    fix->mode = f->mode;
    fix->present = present;
    for (int k = 0; k < GW_FIX_FIELDS; k++)
        fix->values[k] = present & (1u << k) ? gw_round(values[k], gw_digits[k]) : 0.0;
    (*count)++;
    st->stats.fixes++;
}

/* ---- one sentence, as gpsd's nmea_parse and gpsd_poll take it ---- */

static int gw_sentence_type(const gw_text tag, char talker[2])
{
    if (tag.len >= 2 && tag.at[0] == 'P')
        for (int k = GW_PGRME; k <= GW_PGRMF; k++)
            if (gw_is(tag, gw_types[k])) {
                talker[0] = 'P';
                talker[1] = (char)tag.at[1];
                return k;
            }
    if (tag.len != 5)
        return -1;
    int known = 0;
    for (size_t k = 0; k < sizeof gw_talkers / sizeof gw_talkers[0]; k++)
        known |= memcmp(tag.at, gw_talkers[k], 2) == 0;
    for (int k = 0; k < GW_PGRME; k++) {
        if (memcmp(tag.at + 2, gw_types[k], 3) != 0)
            continue;
        /* Quectel's QZSS talker, which gpsd reads as such */
        if (known || (tag.at[0] == 'P' && tag.at[1] == 'Q' && (k == GW_GSA || k == GW_GSV))) {
            talker[0] = (char)tag.at[0];
            talker[1] = (char)tag.at[1];
            return k;
        }
    }
    return -1;
}

static void gw_sentence_body(gw_nmea *st, const uint8_t *body, int64_t len, int checksum,
                             int64_t offset, gw_fix *out, int64_t *count)
{
    for (int64_t k = 0; k < len; k++) {
        if (body[k] < 0x20 || body[k] > 0x7e) {
            st->stats.malformed++; /* gpsd takes printable ASCII only */
            return;
        }
    }
    gw_fields fl;
    fl.n = 0;
    int commas = 0;
    int64_t start = 0;
    for (int64_t k = 0; k <= len; k++) {
        if (k == len || body[k] == ',') {
            if (fl.n < GW_MAX_FIELDS) {
                fl.f[fl.n].at = body + start;
                fl.f[fl.n].len = k - start;
                fl.n++;
            }
            commas += k < len;
            start = k + 1;
        }
    }
    fl.count = commas + checksum;
    /* gpsd reads no field past its count: without a checksum, the last one
     * is lost */
    if (fl.n > fl.count)
        fl.n = fl.count;
    gw_text tag = gw_field(&fl, 0);
    char talker[2] = {0, 0};
    int kind = gw_sentence_type(tag, talker);
    if (st->cycle_offset < 0)
        st->cycle_offset = offset;

    gw_clear_fix(&st->newdata);
    st->latch_frac_time = 0;
    uint32_t mask = GW_M_ONLINE;
    int thistag = 0;
    if (kind < 0) {
        if (tag.len >= 1 && tag.at[0] == 'P')
            st->stats.skipped_proprietary++;
        else
            st->stats.skipped_unknown++;
    } else if (fl.count < gw_min_fields[kind]) {
        st->stats.malformed++; /* too short: gpsd ignores it */
    } else {
        st->stats.sentences++;
        gw_sentence x = {st, &fl, {talker[0], talker[1]}};
        mask = gw_handlers[kind](&x);
        thistag = kind + 1;
    }
    /* What gpsd keeps to accumulate GSA and GSV runs; any sentence but one
     * of those ends a run, unless gpsd never saw it: it drops sentences of
     * more than its NMEA_MAX, 102 bytes with CR/LF (gatewayd reads standard
     * ones of up to max_len). */
    if (kind >= 0 || 1 + len + 3 * checksum + 2 <= GW_GPSD_NMEA_MAX) {
        if (!(tag.len >= 5 && memcmp(tag.at + 2, "GSV", 3) == 0))
            st->last_gsv_talker = 0;
        if (!(tag.len >= 5 && memcmp(tag.at + 2, "GSA", 3) == 0))
            st->last_gsa_talker = 0;
    }

    if (mask & GW_M_TIME) {
        if (st->year == 0 && st->mday == 0) {
            st->newdata.sec = 0;
            st->newdata.nsec = 0;
        } else {
            gw_utc_resolve(st, &st->newdata.sec, &st->newdata.nsec);
        }
        mask |= GW_M_NTPTIME;
    }

    /* The end-of-cycle detector: a time change starts a cycle, and the
     * timed sentence seen last before it is learned as the cycle's end. */
    int lasttag = st->lasttag;
    if (st->latch_frac_time) {
        /* The difference, its nanoseconds carried into [0, 1e9) in one
         * step: from a time field that was no number they are INT64_MIN
         * (see gw_time_int), billions of seconds' worth. */
        int64_t dsec = gw_wrap_sub(st->this_frac_sec, st->last_frac_sec);
        int64_t dnsec = gw_wrap_sub(st->this_frac_nsec, st->last_frac_nsec);
        int64_t carry = dnsec / 1000000000;
        dnsec %= 1000000000;
        if (dnsec < 0) {
            dnsec += 1000000000;
            carry--;
        }
        dsec = gw_wrap_sub(dsec, -carry);
        if (fabs((double)dsec + (double)dnsec / 1e9) > 0.01) {
            mask |= GW_M_CLEAR;
            if (lasttag > 0 && !st->cycle_enders[lasttag] && !st->cycle_continue) {
                st->cycle_enders[lasttag] = 1;
                st->enders |= 1u << (lasttag - 1);
                st->cycle_end_reliable = 1;
            }
        }
    }
    if (st->latch_frac_time && st->cycle_enders[thistag])
        mask |= GW_M_REPORT;
    if (st->latch_frac_time)
        st->lasttag = thistag;
    /* don't downgrade the mode while a 3D fix holds (after RMC, say) */
    if ((mask & GW_M_MODE) && st->fix.mode == GW_MODE_3D &&
        st->newdata.mode != GW_MODE_NO_FIX &&
        (isfinite(st->lastfix.alt_hae) || isfinite(st->oldfix.alt_hae) ||
         isfinite(st->lastfix.alt_msl) || isfinite(st->oldfix.alt_msl)))
        st->newdata.mode = st->fix.mode;

    uint32_t set = GW_M_ONLINE | GW_M_PACKET | mask;
    if ((set & GW_M_SATELLITE) && st->satellites_visible > 0)
        gw_fill_dop(st);
    if (set & GW_M_CLEAR) {
        gw_clear_fix(&st->fix);
        st->cycle_offset = offset;
    }
    gw_merge_fix(&st->fix, set, &st->newdata);
    gw_error_model(st);
    /* Until a cycle's end is known, every position or mode is reported. */
    if (!st->cycle_end_reliable && (set & (GW_M_LATLON | GW_M_MODE)))
        set |= GW_M_REPORT;
    if ((set & GW_M_REPORT) && (set & GW_M_DATA))
        gw_report(st, out, count);
}

void gw_nmea_init(gw_nmea *st)
{
    gw_trig_init();
    memset(st, 0, sizeof *st);
    st->cycle_offset = -1;
    gw_clear_fix(&st->fix);
    gw_clear_fix(&st->newdata);
    gw_clear_fix(&st->lastfix);
    gw_clear_fix(&st->oldfix);
    st->pdop = st->hdop = st->vdop = st->xdop = st->ydop = st->tdop = st->gdop = NAN;
    gw_zero_satellites(st);
    st->century = 2000;
    st->leap_seconds = GW_LEAP_SECONDS;
}

int64_t gw_nmea_decode(gw_nmea *st, const uint8_t *buf, int64_t n, int64_t base,
                       int64_t max_len, int final, gw_fix *out, int64_t capacity,
                       int64_t *consumed)
{
    int64_t count = 0, pos = 0;
    *consumed = 0;
    /* The line end of a sentence that ended the last block goes on here. */
    if (st->line_end) {
        pos = gw_skip_line_ends(buf, n, 0);
        st->line_end = pos == n;
    }
    while (pos < n && count < capacity) {
        int64_t s = 0, e = 0, next = 0;
        int status = 0;
        int found = gw_next_sentence(buf, n, pos, max_len, final, &s, &e, &status, &next,
                                     &st->stats.garbage_bytes);
        if (found < 0) {
            pos = n;
            break;
        }
        if (found == 0) {
            *consumed = s;
            return count;
        }
        if (status == GW_NMEA_OK || status == GW_NMEA_NO_CHECKSUM) {
            int64_t end = e;
            while (end > s && (buf[end - 1] == ' ' || buf[end - 1] == '\t'))
                end--;
            if (status == GW_NMEA_OK)
                end -= 3;
            else
                st->stats.no_checksum++;
            gw_sentence_body(st, buf + s + 1, end - s - 1, status == GW_NMEA_OK, base + s, out,
                             &count);
        } else if (status == GW_NMEA_BAD_CHECKSUM) {
            st->stats.bad_checksum++;
        } else if (status == GW_NMEA_TOO_LONG) {
            st->stats.too_long++;
        } else {
            st->stats.truncated++;
        }
        pos = gw_skip_line_ends(buf, n, next);
        st->line_end = pos == n && next > e;
    }
    *consumed = pos;
    return count;
}

/* ---- fixes as JSON members ---- */

static const char *const gw_value_names[GW_FIX_FIELDS] = {
    "status", "lat", "lon", "altMSL", "altHAE", "geoidSep", "speed", "track", "climb",
    "magvar", "eph", "epx", "epy", "epv"};

/* A rounded value as Python's repr writes it, or -1 where that takes more
 * than a fixed-point number (exponents below 1e-4, or non-finite values).
 * Every value is the double nearest k / 10^digits for an integer k of at most
 * 15 digits (gw_round made it so), so its shortest round-trip form is that
 * decimal: k's digits with the point put in, trailing zeros dropped, ".0"
 * kept. k is recovered exactly from v * 10^digits, whose error is far below
 * one half at these magnitudes. No printf: its exact conversion is slow. */
static int gw_json_number(double v, int digits, char *out, size_t cap)
{
    static const double powers[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    if (!isfinite(v) || fabs(v) >= 1e15 || (v != 0.0 && fabs(v) < 1e-4) || cap < 32 ||
        digits > 9)
        return -1;
    int integer = digits < 0; /* status: written without a point */
    if (integer) {
        if (v != trunc(v))
            return -1;
        digits = 0;
    }
    double scaled = nearbyint(v * powers[digits]);
    if (fabs(scaled) >= 1e15)
        return -1;
    long long k = (long long)scaled;
    unsigned long long u = k < 0 ? (unsigned long long)(-k) : (unsigned long long)k;
    char digit[24];
    int n = 0;
    do {
        digit[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n <= digits)
        digit[n++] = '0'; /* at least one digit before the point */
    int len = 0;
    if (signbit(v))
        out[len++] = '-';
    for (int i = n - 1; i >= digits; i--)
        out[len++] = digit[i];
    if (integer) {
        out[len] = 0;
        return len;
    }
    out[len++] = '.';
    int last = 0; /* the lowest nonzero decimal */
    while (last < digits && digit[last] == '0')
        last++;
    if (last == digits) {
        out[len++] = '0';
    } else {
        for (int i = digits - 1; i >= last; i--)
            out[len++] = digit[i];
    }
    out[len] = 0;
    return len;
}

/* The values of fixes[0..n) as JSON members (',"lat":48.1173,...', after
 * time and mode), one after another in out; ends[i] is where fix i's end, or
 * -1 for a fix Python must write (a value too small for fixed point). Returns
 * the bytes written, or -1 when out is too small for them. A fix's numbers
 * are made before any is written, so that it takes room only if it is
 * written, and its members are copied, not printed: out holds no
 * terminating NUL, and a member that just fits is written whole. */
int64_t gw_fix_json(const gw_fix *fixes, int64_t n, char *out, int64_t cap, int64_t *ends)
{
    int64_t used = 0;
    char numbers[GW_FIX_FIELDS][32];
    int lens[GW_FIX_FIELDS];
    for (int64_t i = 0; i < n; i++) {
        int64_t need = 0;
        int ok = 1;
        for (int k = 0; k < GW_FIX_FIELDS && ok; k++) {
            if (!(fixes[i].present & (1u << k)))
                continue;
            lens[k] = gw_json_number(fixes[i].values[k], gw_digits[k], numbers[k],
                                     sizeof numbers[k]);
            ok = lens[k] >= 0;
            need += (int64_t)strlen(gw_value_names[k]) + lens[k] + 4;
        }
        if (!ok) {
            ends[i] = -1;
            continue;
        }
        if (used + need > cap)
            return -1;
        for (int k = 0; k < GW_FIX_FIELDS; k++) {
            if (!(fixes[i].present & (1u << k)))
                continue;
            size_t name_len = strlen(gw_value_names[k]);
            char *at = out + used;
            *at++ = ',';
            *at++ = '"';
            memcpy(at, gw_value_names[k], name_len);
            at += name_len;
            *at++ = '"';
            *at++ = ':';
            memcpy(at, numbers[k], (size_t)lens[k]);
            used += (int64_t)name_len + lens[k] + 4;
        }
        ends[i] = used;
    }
    return used;
}
