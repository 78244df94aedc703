/*
 * NMEA 0183 decoding in one pass over a block of serial bytes.
 *
 * Framing (gw_nmea_scan, and the first step of gw_nmea_decode): every
 * sentence is found, its checksum checked and its place reported. Survives
 * garbage and binary bytes, resyncs at '$', accepts sentences glued without
 * CR/LF when their checksum closes them, and never holds more than one
 * partial sentence.
 *
 * Fix assembly (gw_nmea_decode): the fields of good sentences are read and
 * fixes assembled as gpsd assembles them, one per reporting cycle, by the
 * rules gatewayd/nmea.py states. Numbers are read as Python's int() and
 * float() read them; a field that does not parse makes its sentence
 * malformed at that point, keeping what the sentence changed before it.
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
    } else if (e - s > max_len + 8) {
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

/* ---- fix assembly ---- */

enum {
    GW_F_STATUS, GW_F_LAT, GW_F_LON, GW_F_ALT_MSL, GW_F_ALT_HAE, GW_F_GEOID_SEP, GW_F_SPEED,
    GW_F_TRACK, GW_F_CLIMB, GW_F_MAGVAR, GW_F_EPH, GW_F_EPX, GW_F_EPY, GW_F_EPV
};

/* Sentence types, in gatewayd.nmea.SENTENCE_TYPES order (bits of enders). */
enum { GW_GGA, GW_RMC, GW_GNS, GW_GLL, GW_VTG, GW_GSA, GW_GSV, GW_ZDA, GW_GST, GW_GBS };
static const char gw_types[][4] = {"GGA", "RMC", "GNS", "GLL", "VTG",
                                   "GSA", "GSV", "ZDA", "GST", "GBS"};
static const char gw_talkers[][3] = {"GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "GQ"};

#define GW_KNOTS (1852.0 / 3600.0)
#define GW_KMH (1000.0 / 3600.0)
#define GW_CYCLE_GAP_S 0.01
#define GW_MAX_FIELDS 256 /* a sentence of at most max_len bytes has fewer */

/* gpsd's JSON precision per value (-1: not rounded). */
static const int gw_digits[GW_FIX_FIELDS] = {-1, 9, 9, 3, 3, 3, 3, 4, -1, 1, -1, 3, 3, 3};

typedef struct {
    const uint8_t *at;
    int64_t len;
} gw_text;

typedef struct {
    gw_text f[GW_MAX_FIELDS];
    int n;
} gw_fields;

/* A field of the sentence; 0 when the sentence has no such field (Python's
 * IndexError: the sentence is malformed). */
#define FIELD(var, k)                                                                          \
    if ((k) >= fl->n)                                                                          \
        return -1;                                                                             \
    gw_text var = fl->f[(k)]

/* Whether a field is the string literal s. */
#define gw_is(t, s) ((t).len == (int64_t)sizeof(s) - 1 && memcmp((t).at, s, sizeof(s) - 1) == 0)

static gw_text gw_slice(gw_text t, int64_t from, int64_t to)
{
    if (to > t.len)
        to = t.len;
    if (from > to)
        from = to;
    gw_text out = {t.at + from, to - from};
    return out;
}

/* Python's str.isspace() on ASCII. */
static int gw_space(uint8_t c)
{
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
}

static gw_text gw_strip(gw_text t)
{
    while (t.len > 0 && gw_space(t.at[0])) {
        t.at++;
        t.len--;
    }
    while (t.len > 0 && gw_space(t.at[t.len - 1]))
        t.len--;
    return t;
}

static int gw_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* Digits with single underscores between them, as Python's int() and float()
 * take them; copied without the underscores. Returns the length read. */
static int64_t gw_digits_at(gw_text t, int64_t k, char *out, int64_t *written)
{
    int64_t start = k;
    if (k >= t.len || !gw_digit(t.at[k]))
        return 0;
    while (k < t.len) {
        if (gw_digit(t.at[k])) {
            out[(*written)++] = (char)t.at[k++];
        } else if (t.at[k] == '_' && k + 1 < t.len && gw_digit(t.at[k + 1])) {
            k++;
        } else {
            break;
        }
    }
    return k - start;
}

/* Python's int(text): 0, or -1 where it raises ValueError. */
static int gw_int(gw_text t, int64_t *out)
{
    char buf[160];
    int64_t w = 0, k = 0;
    t = gw_strip(t);
    if (t.len == 0 || t.len >= (int64_t)sizeof buf - 1)
        return -1;
    if (t.at[0] == '+' || t.at[0] == '-')
        buf[w++] = (char)t.at[k++];
    int64_t n = gw_digits_at(t, k, buf, &w);
    if (n == 0 || k + n != t.len || w > 18)
        return -1;
    int64_t value = 0;
    for (int64_t i = buf[0] == '+' || buf[0] == '-'; i < w; i++)
        value = value * 10 + (buf[i] - '0');
    *out = buf[0] == '-' ? -value : value;
    return 0;
}

static int gw_word(gw_text t, int64_t k, const char *word)
{
    size_t n = strlen(word);
    if (t.len - k != (int64_t)n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = t.at[k + i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c - 'A' + 'a');
        if (c != (uint8_t)word[i])
            return 0;
    }
    return 1;
}

/* A checked decimal number (sign, digits, point, exponent) as the nearest
 * double. Up to 15 significant digits and no exponent, digits / 10^k is one
 * correctly rounded division of two exact doubles: what strtod gives, sooner. */
static double gw_decimal(const char *text, int64_t len)
{
    static const double powers[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                    1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    int64_t k = 0, digits = 0, fraction = -1;
    int negative = 0;
    uint64_t mantissa = 0;
    if (text[0] == '+' || text[0] == '-') {
        negative = text[0] == '-';
        k++;
    }
    for (; k < len; k++) {
        char c = text[k];
        if (c == '.') {
            fraction = 0;
        } else if (c >= '0' && c <= '9') {
            if (mantissa || c != '0')
                digits++;
            mantissa = mantissa * 10 + (uint64_t)(c - '0');
            if (fraction >= 0)
                fraction++;
            if (digits > 15)
                return strtod(text, NULL);
        } else {
            return strtod(text, NULL); /* an exponent */
        }
    }
    if (fraction > 22)
        return strtod(text, NULL);
    double value = (double)mantissa;
    if (fraction > 0)
        value /= powers[fraction];
    return negative ? -value : value;
}

/* Python's float(text): 0, or -1 where it raises ValueError. */
static int gw_float(gw_text t, double *out)
{
    char buf[160];
    int64_t w = 0, k = 0;
    t = gw_strip(t);
    if (t.len == 0 || t.len >= (int64_t)sizeof buf - 1)
        return -1;
    int negative = 0;
    if (t.at[0] == '+' || t.at[0] == '-') {
        negative = t.at[0] == '-';
        buf[w++] = (char)t.at[k++];
    }
    uint8_t first = k < t.len ? t.at[k] : 0;
    if ((first == 'i' || first == 'I') && (gw_word(t, k, "inf") || gw_word(t, k, "infinity"))) {
        *out = negative ? -HUGE_VAL : HUGE_VAL;
        return 0;
    }
    if ((first == 'n' || first == 'N') && gw_word(t, k, "nan")) {
        *out = negative ? -NAN : NAN;
        return 0;
    }
    int64_t whole = gw_digits_at(t, k, buf, &w);
    k += whole;
    int64_t fraction = 0;
    if (k < t.len && t.at[k] == '.') {
        buf[w++] = '.';
        k++;
        fraction = gw_digits_at(t, k, buf, &w);
        k += fraction;
    }
    if (whole == 0 && fraction == 0)
        return -1;
    if (k < t.len && (t.at[k] == 'e' || t.at[k] == 'E')) {
        buf[w++] = 'e';
        k++;
        if (k < t.len && (t.at[k] == '+' || t.at[k] == '-'))
            buf[w++] = (char)t.at[k++];
        int64_t exponent = gw_digits_at(t, k, buf, &w);
        if (exponent == 0)
            return -1;
        k += exponent;
    }
    if (k != t.len)
        return -1;
    buf[w] = 0;
    *out = gw_decimal(buf, w);
    return 0;
}

/* _float: None for an empty field or a non-finite number. */
static int gw_number(gw_text t, int *has, double *out)
{
    *has = 0;
    if (t.len == 0)
        return 0;
    if (gw_float(t, out))
        return -1;
    *has = isfinite(*out);
    return 0;
}

static int gw_time_of_day(gw_text t, int *has, double *tod)
{
    int64_t h, m;
    double s;
    *has = 0;
    if (t.len < 6)
        return 0;
    if (gw_int(gw_slice(t, 0, 2), &h) || gw_int(gw_slice(t, 2, 4), &m) ||
        gw_float(gw_slice(t, 4, t.len), &s))
        return -1;
    double seconds = (double)(h * 3600 + m * 60) + s;
    if (seconds >= 0 && seconds < 86401) {
        *has = 1;
        *tod = seconds;
    }
    return 0;
}

static int gw_lat_lon(gw_text value, gw_text hemi, int64_t degree_digits, int *has, double *out)
{
    double degrees, minutes;
    *has = 0;
    if (value.len == 0 || hemi.len == 0 || value.len < degree_digits + 1)
        return 0;
    if (gw_float(gw_slice(value, 0, degree_digits), &degrees) ||
        gw_float(gw_slice(value, degree_digits, value.len), &minutes))
        return -1;
    degrees = degrees + minutes / 60.0;
    if (gw_is(hemi, "S") || gw_is(hemi, "W")) {
        *has = 1;
        *out = -degrees;
    } else if (gw_is(hemi, "N") || gw_is(hemi, "E")) {
        *has = 1;
        *out = degrees;
    }
    return 0;
}

/* ---- calendar (proleptic Gregorian, as Python's datetime) ---- */

static int64_t gw_days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

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

/* datetime.date(year, month, day): -1 where it raises ValueError. */
static int gw_set_date(gw_nmea *st, int64_t day, int64_t month, int64_t year)
{
    static const int64_t month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (year < 1 || year > 9999 || month < 1 || month > 12 || day < 1)
        return -1;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > month_days[month - 1] + (month == 2 && leap))
        return -1;
    st->has_date = 1;
    st->day = gw_days_from_civil(year, month, day);
    return 0;
}

/* Python's round(x, digits), which rounds the exact binary value half to
 * even. Scaling decides it unless the scaled value lies within its rounding
 * error of a tie; then the correctly rounded decimal conversion does. */
static double gw_round(double x, int digits)
{
    static const double powers[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    if (digits < 0 || !isfinite(x))
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

/* ---- cycles ---- */

static void gw_report(gw_nmea *st, gw_fix *out, int64_t *count)
{
    if (!st->open || st->reported)
        return;
    st->reported = 1;
    uint32_t present = st->present;
    double values[GW_FIX_FIELDS];
    memcpy(values, st->values, sizeof values);
#define HAS(k) (present & (1u << (k)))
    int mode;
    if (st->no_fix && !st->fix_claimed)
        mode = 1;
    else if (st->gsa_mode)
        mode = st->gsa_mode;
    else if (HAS(GW_F_ALT_MSL))
        mode = 3;
    else if (HAS(GW_F_LAT))
        mode = 2;
    else
        mode = 1;
    if (mode == 1)
        present &= ~((1u << GW_F_LAT) | (1u << GW_F_LON) | (1u << GW_F_ALT_MSL) |
                     (1u << GW_F_ALT_HAE) | (1u << GW_F_SPEED) | (1u << GW_F_TRACK));
    else if (mode == 2)
        present &= ~((1u << GW_F_ALT_MSL) | (1u << GW_F_ALT_HAE));
    int has_time = st->open && st->has_tod && st->has_date;
    double epoch = 0;
    char time[GW_FIX_TIME_LEN];
    int64_t us = 0, of_day = 0, y = 0, m = 0, d = 0;
    if (has_time) {
        /* datetime + timedelta(seconds=tod): whole seconds exactly, the
         * fraction rounded to microseconds half to even. */
        double whole;
        double fraction = modf(st->tod, &whole);
        us = (st->day * 86400 + (int64_t)whole) * 1000000 + (int64_t)nearbyint(fraction * 1e6);
        int64_t days = us >= 0 ? us / 86400000000LL : -((-us + 86399999999LL) / 86400000000LL);
        of_day = us - days * 86400000000LL;
        gw_civil_from_days(days, &y, &m, &d);
        if (y < 1 || y > 9999)
            has_time = 0; /* past what a date can say: the fix goes without a time */
    }
    if (has_time) {
        int64_t parts[] = {y / 100, y % 100, m, d, of_day / 3600000000LL,
                           of_day / 60000000 % 60, of_day / 1000000 % 60, of_day / 1000 % 1000};
        memcpy(time, "0000-00-00T00:00:00.000Z", GW_FIX_TIME_LEN);
        static const int at[] = {0, 2, 5, 8, 11, 14, 17, 20};
        for (int i = 0; i < 8; i++) {
            int64_t v = parts[i];
            if (i == 7) {
                time[at[i]] = (char)('0' + v / 100);
                v %= 100;
                time[at[i] + 1] = (char)('0' + v / 10);
                time[at[i] + 2] = (char)('0' + v % 10);
            } else {
                time[at[i]] = (char)('0' + v / 10);
                time[at[i] + 1] = (char)('0' + v % 10);
            }
        }
        epoch = (double)us / 1e6;
    }
    if (mode == 3 && has_time && HAS(GW_F_ALT_HAE)) {
        if (st->has_previous && epoch - st->previous_epoch > 0 &&
            epoch - st->previous_epoch <= 10) {
            values[GW_F_CLIMB] = gw_round((values[GW_F_ALT_HAE] - st->previous_alt) /
                                          (epoch - st->previous_epoch), 3);
            present |= 1u << GW_F_CLIMB;
        }
        st->has_previous = 1;
        st->previous_epoch = epoch;
        st->previous_alt = values[GW_F_ALT_HAE];
    }
    /* A record never carries a number JSON cannot say (a receiver's "nan"
     * magnetic variation, or a sum that overflowed): such a value is absent. */
    for (int k = 0; k < GW_FIX_FIELDS; k++)
        if (HAS(k) && !isfinite(values[k]))
            present &= ~(1u << k);
    if (!present && !has_time && mode == 1)
        return; /* a cycle of satellites in view only: nothing to report */
    gw_fix *fix = &out[(*count)++];
    fix->offset = st->offset;
    fix->mode = mode;
    fix->present = present;
    for (int k = 0; k < GW_FIX_FIELDS; k++)
        fix->values[k] = HAS(k) ? gw_round(values[k], gw_digits[k]) : 0.0;
    if (has_time)
        memcpy(fix->time, time, GW_FIX_TIME_LEN);
    else
        memset(fix->time, 0, GW_FIX_TIME_LEN);
    st->stats.fixes++;
#undef HAS
}

static void gw_close_cycle(gw_nmea *st, gw_fix *out, int64_t *count)
{
    if (st->open)
        gw_report(st, out, count);
    st->open = 0;
}

static void gw_open_cycle(gw_nmea *st, int64_t offset)
{
    st->open = 1;
    st->reported = 0;
    st->no_fix = 0;
    st->fix_claimed = 0;
    st->gsa_mode = 0;
    st->has_tod = 0;
    st->offset = offset;
    st->present = 0;
}

static void gw_set(gw_nmea *st, int k, double value)
{
    st->values[k] = value;
    st->present |= 1u << k;
}

/* The cycle a sentence with time of day tod belongs to: a time that moved on
 * closes the open one, and the sentence seen last is learned as its end. */
static void gw_timed(gw_nmea *st, int has_tod, double tod, int64_t offset, gw_fix *out,
                     int64_t *count)
{
    if (has_tod && st->open && st->has_tod) {
        double gap = fabs(tod - st->tod);
        double wrapped = 86400 - gap;
        if ((gap < wrapped ? gap : wrapped) > GW_CYCLE_GAP_S) {
            if (st->last_tag >= 0)
                st->enders |= 1u << st->last_tag;
            gw_close_cycle(st, out, count);
        }
    }
    if (!st->open)
        gw_open_cycle(st, offset);
    if (has_tod && !st->has_tod) {
        st->has_tod = 1;
        st->tod = tod;
        /* Past midnight before a dated sentence says so: the day moves on. */
        if (st->has_date && st->has_last_tod && tod < st->last_tod - 43200)
            st->day += 1;
        st->has_last_tod = 1;
        st->last_tod = tod;
    }
}

static void gw_untimed(gw_nmea *st, int64_t offset)
{
    if (!st->open)
        gw_open_cycle(st, offset);
}

static void gw_position(gw_nmea *st, int has_lat, double lat, int has_lon, double lon)
{
    if (has_lat && has_lon && lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180) {
        gw_set(st, GW_F_LAT, lat);
        gw_set(st, GW_F_LON, lon);
        st->fix_claimed = 1;
    }
}

static void gw_altitude(gw_nmea *st, int has_alt, double alt, int has_sep, double sep)
{
    if (!has_alt)
        return;
    gw_set(st, GW_F_ALT_MSL, alt);
    if (has_sep) {
        gw_set(st, GW_F_GEOID_SEP, sep);
        gw_set(st, GW_F_ALT_HAE, alt + sep);
    }
}

/* Latitude from fields a, b and longitude from c, d. */
static int gw_fields_position(gw_nmea *st, const gw_fields *fl, int a)
{
    int has_lat, has_lon;
    double lat = 0, lon = 0;
    FIELD(lat_text, a);
    FIELD(ns, a + 1);
    if (gw_lat_lon(lat_text, ns, 2, &has_lat, &lat))
        return -1;
    FIELD(lon_text, a + 2);
    FIELD(ew, a + 3);
    if (gw_lat_lon(lon_text, ew, 3, &has_lon, &lon))
        return -1;
    gw_position(st, has_lat, lat, has_lon, lon);
    return 0;
}

typedef struct {
    gw_nmea *st;
    const gw_fields *fl;
    int64_t offset;
    gw_fix *out;
    int64_t *count;
} gw_sentence;

static int gw_rmc(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    int has_tod;
    double tod = 0;
    FIELD(time, 1);
    if (gw_time_of_day(time, &has_tod, &tod))
        return -1;
    FIELD(date, 9);
    if (date.len == 6) {
        int64_t day, month, yy;
        if (gw_int(gw_slice(date, 0, 2), &day) || gw_int(gw_slice(date, 2, 4), &month) ||
            gw_int(gw_slice(date, 4, 6), &yy))
            return -1;
        if (gw_set_date(st, day, month, yy < 80 ? 2000 + yy : 1900 + yy))
            return -1;
    }
    gw_timed(st, has_tod, tod, x->offset, x->out, x->count);
    FIELD(valid, 2);
    if (!gw_is(valid, "A") || (fl->n > 12 && gw_is(fl->f[12], "N"))) {
        st->no_fix = 1;
        return 0;
    }
    if (gw_fields_position(st, fl, 3))
        return -1;
    int has_speed, has_track;
    double speed = 0, track = 0;
    FIELD(speed_text, 7);
    if (gw_number(speed_text, &has_speed, &speed))
        return -1;
    FIELD(track_text, 8);
    if (gw_number(track_text, &has_track, &track))
        return -1;
    if (has_speed)
        gw_set(st, GW_F_SPEED, speed * GW_KNOTS);
    if (has_track)
        gw_set(st, GW_F_TRACK, track);
    if (fl->n > 11 && fl->f[10].len) {
        double magvar;
        if (gw_float(fl->f[10], &magvar))
            return -1;
        gw_set(st, GW_F_MAGVAR, gw_is(fl->f[11], "W") ? -magvar : magvar);
    }
    return 0;
}

static int gw_gga(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    int has_tod;
    double tod = 0;
    FIELD(time, 1);
    if (gw_time_of_day(time, &has_tod, &tod))
        return -1;
    gw_timed(st, has_tod, tod, x->offset, x->out, x->count);
    FIELD(quality, 6);
    if (quality.len == 0 || gw_is(quality, "0")) {
        st->no_fix = 1;
        return 0;
    }
    if (gw_fields_position(st, fl, 2))
        return -1;
    /* GGA quality to gpsd's TPV status: 2 DGPS, 3 RTK fixed, 4 RTK float, 6 DR. */
    static const double statuses[] = {2, 2, 3, 4, 6};
    if (quality.len == 1 && quality.at[0] >= '2' && quality.at[0] <= '6')
        gw_set(st, GW_F_STATUS, statuses[quality.at[0] - '2']);
    int has_alt, has_sep = 0;
    double alt = 0, sep = 0;
    FIELD(alt_text, 9);
    if (gw_number(alt_text, &has_alt, &alt))
        return -1;
    if (fl->n > 11 && gw_number(fl->f[11], &has_sep, &sep))
        return -1;
    gw_altitude(st, has_alt, alt, has_sep, sep);
    return 0;
}

static int gw_gns(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    int has_tod;
    double tod = 0;
    FIELD(time, 1);
    if (gw_time_of_day(time, &has_tod, &tod))
        return -1;
    gw_timed(st, has_tod, tod, x->offset, x->out, x->count);
    FIELD(modes, 6);
    int none = 1;
    for (int64_t k = 0; k < modes.len; k++)
        none &= modes.at[k] == 'N';
    if (modes.len == 0 || none) {
        st->no_fix = 1;
        return 0;
    }
    if (gw_fields_position(st, fl, 2))
        return -1;
    int has_alt, has_sep;
    double alt = 0, sep = 0;
    FIELD(alt_text, 9);
    if (gw_number(alt_text, &has_alt, &alt))
        return -1;
    FIELD(sep_text, 10);
    if (gw_number(sep_text, &has_sep, &sep))
        return -1;
    gw_altitude(st, has_alt, alt, has_sep, sep);
    return 0;
}

static int gw_gll(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    int has_tod = 0;
    double tod = 0;
    if (fl->n > 5 && gw_time_of_day(fl->f[5], &has_tod, &tod))
        return -1;
    gw_timed(st, has_tod, tod, x->offset, x->out, x->count);
    if (fl->n < 7 || !gw_is(fl->f[6], "A") || (fl->n > 7 && gw_is(fl->f[7], "N"))) {
        st->no_fix = 1;
        return 0;
    }
    return gw_fields_position(st, fl, 1);
}

static int gw_vtg(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    gw_untimed(st, x->offset);
    if (fl->n > 9 && gw_is(fl->f[9], "N"))
        return 0;
    int has_track, has_knots = 0, has_kmh = 0;
    double track = 0, knots = 0, kmh = 0;
    FIELD(track_text, 1);
    if (gw_number(track_text, &has_track, &track))
        return -1;
    if (has_track)
        gw_set(st, GW_F_TRACK, track);
    if (fl->n > 5 && gw_number(fl->f[5], &has_knots, &knots))
        return -1;
    if (fl->n > 7 && gw_number(fl->f[7], &has_kmh, &kmh))
        return -1;
    if (has_knots)
        gw_set(st, GW_F_SPEED, knots * GW_KNOTS);
    else if (has_kmh)
        gw_set(st, GW_F_SPEED, kmh * GW_KMH);
    return 0;
}

static int gw_gsa(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    gw_untimed(st, x->offset);
    FIELD(mode, 2);
    if (gw_is(mode, "1") || gw_is(mode, "2") || gw_is(mode, "3")) {
        /* Several GSA per cycle (one per constellation): the best one wins. */
        int value = mode.at[0] - '0';
        if (value > st->gsa_mode)
            st->gsa_mode = value;
    }
    return 0;
}

static int gw_gsv(gw_sentence *x)
{
    gw_untimed(x->st, x->offset);
    return 0;
}

static int gw_zda(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    int has_tod;
    double tod = 0;
    FIELD(time, 1);
    if (gw_time_of_day(time, &has_tod, &tod))
        return -1;
    FIELD(day_text, 2);
    if (day_text.len) {
        FIELD(month_text, 3);
        if (month_text.len) {
            FIELD(year_text, 4);
            if (year_text.len) {
                int64_t day, month, year;
                if (gw_int(day_text, &day) || gw_int(month_text, &month) ||
                    gw_int(year_text, &year) || gw_set_date(st, day, month, year))
                    return -1;
            }
        }
    }
    gw_timed(st, has_tod, tod, x->offset, x->out, x->count);
    return 0;
}

static int gw_gst(gw_sentence *x)
{
    /* gpsd keeps GST in its own report, not in TPV: it only dates the cycle. */
    int has_tod;
    double tod = 0;
    const gw_fields *fl = x->fl;
    FIELD(time, 1);
    if (gw_time_of_day(time, &has_tod, &tod))
        return -1;
    gw_timed(x->st, has_tod, tod, x->offset, x->out, x->count);
    return 0;
}

static int gw_gbs(gw_sentence *x)
{
    gw_nmea *st = x->st;
    const gw_fields *fl = x->fl;
    int has_tod;
    double tod = 0;
    FIELD(time, 1);
    if (gw_time_of_day(time, &has_tod, &tod))
        return -1;
    gw_timed(st, has_tod, tod, x->offset, x->out, x->count);
    if (fl->n < 5)
        return -1;
    static const int fields[] = {GW_F_EPY, GW_F_EPX, GW_F_EPV};
    for (int k = 0; k < 3; k++) {
        int has;
        double value = 0;
        if (gw_number(fl->f[2 + k], &has, &value))
            return -1;
        if (has)
            gw_set(st, fields[k], value);
    }
    return 0;
}

static int (*const gw_handlers[])(gw_sentence *) = {
    gw_gga, gw_rmc, gw_gns, gw_gll, gw_vtg, gw_gsa, gw_gsv, gw_zda, gw_gst, gw_gbs,
};

/* One good sentence's body (between '$' and '*'). */
static void gw_sentence_body(gw_nmea *st, const uint8_t *body, int64_t len, int64_t offset,
                             gw_fix *out, int64_t *count)
{
    gw_fields fl;
    fl.n = 0;
    int64_t start = 0;
    for (int64_t k = 0; k < len; k++) {
        if (body[k] & 0x80) {
            st->stats.malformed++; /* not ASCII */
            return;
        }
    }
    for (int64_t k = 0; k <= len; k++) {
        if (k == len || body[k] == ',') {
            if (fl.n < GW_MAX_FIELDS) {
                fl.f[fl.n].at = body + start;
                fl.f[fl.n].len = k - start;
            }
            fl.n++;
            start = k + 1;
        }
    }
    if (fl.n > GW_MAX_FIELDS)
        fl.n = GW_MAX_FIELDS;
    gw_text tag = fl.f[0];
    if (tag.len >= 1 && tag.at[0] == 'P') {
        st->stats.skipped_proprietary++;
        return;
    }
    int talker = 0, kind = -1;
    if (tag.len == 5) {
        for (size_t k = 0; k < sizeof gw_talkers / sizeof gw_talkers[0]; k++)
            talker |= memcmp(tag.at, gw_talkers[k], 2) == 0;
        for (int k = 0; k < (int)(sizeof gw_types / sizeof gw_types[0]); k++)
            if (memcmp(tag.at + 2, gw_types[k], 3) == 0)
                kind = k;
    }
    if (!talker || kind < 0) {
        st->stats.skipped_unknown++;
        return;
    }
    st->stats.sentences++;
    gw_sentence x = {st, &fl, offset, out, count};
    if (gw_handlers[kind](&x)) {
        st->stats.malformed++;
        return;
    }
    st->last_tag = kind;
    if ((st->enders & (1u << kind)) && st->open)
        gw_report(st, out, count);
}

void gw_nmea_init(gw_nmea *st)
{
    memset(st, 0, sizeof *st);
    st->last_tag = -1;
}

int64_t gw_nmea_decode(gw_nmea *st, const uint8_t *buf, int64_t n, int64_t base,
                       int64_t max_len, int final, gw_fix *out, int64_t capacity,
                       int64_t *consumed)
{
    int64_t count = 0, pos = 0;
    *consumed = 0;
    /* A sentence makes at most two fixes: the cycle it closes and its own. */
    while (pos < n && count + 2 <= capacity) {
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
            gw_sentence_body(st, buf + s + 1, end - s - 1, base + s, out, &count);
        } else if (status == GW_NMEA_BAD_CHECKSUM) {
            st->stats.bad_checksum++;
        } else if (status == GW_NMEA_TOO_LONG) {
            st->stats.too_long++;
        } else {
            st->stats.truncated++;
        }
        pos = gw_skip_line_ends(buf, n, next);
    }
    *consumed = pos;
    return count;
}

int64_t gw_nmea_finish(gw_nmea *st, gw_fix *out)
{
    int64_t count = 0;
    gw_close_cycle(st, out, &count);
    return count;
}
