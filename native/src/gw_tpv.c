/* gpsd TPV objects (JSON), read in one pass.
 *
 * A reader for the plain shape gpsd and most publishers write: one flat
 * object of ASCII strings without escapes, numbers, true, false and null. It
 * gives what gatewayd.gpsjson.gps_json_tpv gives for such a document: the last
 * "class" is "TPV", mode is the last "mode" where that is the integer 1, 2 or
 * 3 (else 1), time is the last "time" where that is a string, and each
 * number member is the last member of that name where that is a finite
 * number. Anything else (escapes, bytes outside printable ASCII, nesting,
 * NaN, long numbers, a position that gps_json_tpv refuses, text that is not
 * JSON at all) is left to Python's json, which reads it or says why not: this
 * reader answers 0 and writes nothing that counts.
 *
 * Numbers are converted as Python converts them: a decimal number or an
 * integer to the nearest double (strtod rounds correctly, and it is asked to
 * read the whole literal, so a locale with another decimal point sends the
 * document to Python), an integer zero to +0.0 (Python's int has no -0).
 *
 * The fields but "class" are also written as JSON members, as Python's json
 * writes them (see gw_tpv_number), wherever every number can be: else
 * members_len is -1 and Python writes them. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static const char *const gw_tpv_names[GW_TPV_NUMBERS] = {
    "lat", "lon", "altMSL", "altHAE", "alt", "speed", "track", "climb",
    "magvar", "eph", "epx", "epy", "epv"};

enum { GW_KEY_OTHER = -1, GW_KEY_CLASS = -2, GW_KEY_MODE = -3, GW_KEY_TIME = -4 };
enum { GW_LAT = 0, GW_LON = 1, GW_ALT_MSL = 2, GW_ALT = 4 }; /* in gw_tpv_names */

#define GW_NUMBER_MAX 100 /* longer literals go to Python */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} gw_cursor;

static void gw_skip_ws(gw_cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* A string without escapes, of printable ASCII (what Python's json writes
 * as it is): its bytes from *start, *len of them. 0 for anything else. */
static int gw_string(gw_cursor *c, const uint8_t **start, int64_t *len)
{
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const uint8_t *s = ++c->p;
    while (c->p < c->end) {
        uint8_t b = *c->p;
        if (b == '"') {
            *start = s;
            *len = c->p - s;
            c->p++;
            return 1;
        }
        if (b < 0x20 || b > 0x7E || b == '\\')
            return 0;
        c->p++;
    }
    return 0;
}

static int gw_digit(uint8_t b)
{
    return b >= '0' && b <= '9';
}

/* A JSON number: its value, and whether it is written as an integer. 0 for
 * what JSON's grammar does not allow, or a literal longer than
 * GW_NUMBER_MAX. */
static int gw_number(gw_cursor *c, double *value, int *integer)
{
    const uint8_t *s = c->p, *p = c->p, *e = c->end;
    if (p < e && *p == '-')
        p++;
    if (p >= e || !gw_digit(*p))
        return 0;
    if (*p == '0') {
        p++;
    } else {
        while (p < e && gw_digit(*p))
            p++;
    }
    *integer = 1;
    if (p < e && *p == '.') {
        *integer = 0;
        p++;
        if (p >= e || !gw_digit(*p))
            return 0;
        while (p < e && gw_digit(*p))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *integer = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || !gw_digit(*p))
            return 0;
        while (p < e && gw_digit(*p))
            p++;
    }
    int64_t len = p - s;
    if (len > GW_NUMBER_MAX)
        return 0;
    char text[GW_NUMBER_MAX + 1];
    memcpy(text, s, (size_t)len);
    text[len] = 0;
    char *stop = NULL;
    double v = strtod(text, &stop);
    if (stop != text + len)
        return 0;
    if (*integer && v == 0.0)
        v = 0.0; /* "-0": an int, and so +0.0 */
    *value = v;
    c->p = p;
    return 1;
}

/* A number literal as Python's repr writes its double: -1 where that cannot
 * be told from the literal alone. A decimal of at most 15 significant digits
 * is the only one of at most 15 digits to round to its double (DBL_DIG), so
 * repr's shortest round-trip digits are its digits, and repr writes them in
 * fixed point (the point after at most 16 digits, at most 3 zeros after it):
 * integer digits, the point, the fraction's digits without trailing zeros or
 * "0". An integer is a Python int first: "-0" is 0.0. Exponents, and more
 * digits, are Python's to write. */
static int64_t gw_tpv_number(const uint8_t *s, int64_t len, int integer, char *out)
{
    const uint8_t *e = s + len;
    int64_t n = 0;
    int negative = s < e && *s == '-';
    if (negative)
        s++;
    const uint8_t *int_start = s;
    while (s < e && gw_digit(*s))
        s++;
    int64_t int_len = s - int_start;
    int zero_int = int_len == 1 && *int_start == '0';
    if (integer) {
        if (zero_int) {
            memcpy(out, "0.0", 3);
            return 3;
        }
        if (int_len > 15)
            return -1;
        if (negative)
            out[n++] = '-';
        memcpy(out + n, int_start, (size_t)int_len);
        n += int_len;
        memcpy(out + n, ".0", 2);
        return n + 2;
    }
    if (s >= e || *s != '.')
        return -1; /* an exponent: repr may write one too */
    const uint8_t *frac = ++s;
    while (s < e && gw_digit(*s))
        s++;
    if (s != e)
        return -1;
    int64_t frac_len = s - frac;
    while (frac_len > 0 && frac[frac_len - 1] == '0')
        frac_len--;
    int64_t significant = int_len + frac_len;
    if (zero_int) {
        int64_t zeros = 0;
        while (zeros < frac_len && frac[zeros] == '0')
            zeros++;
        if (frac_len > 0 && zeros > 3)
            return -1; /* repr: 1e-05 and below */
        significant = frac_len - zeros;
    }
    if (significant > 15)
        return -1;
    if (negative)
        out[n++] = '-'; /* -0.0 too: a float keeps its sign */
    memcpy(out + n, int_start, (size_t)int_len);
    n += int_len;
    out[n++] = '.';
    if (frac_len == 0) {
        out[n++] = '0';
    } else {
        memcpy(out + n, frac, (size_t)frac_len);
        n += frac_len;
    }
    return n;
}

/* The fields but "class" as JSON members into out->members; -1 in
 * members_len where a number or the time is Python's to write. */
static void gw_tpv_members(const uint8_t *buf, gw_tpv *out, const int64_t *at,
                           const int64_t *len, const int *integer)
{
    char *m = out->members;
    int64_t n = 0, cap = (int64_t)sizeof out->members;
    out->members_len = -1;
    if (out->time_start >= 0 && out->time_len > cap - 64)
        return;
    memcpy(m, "\"mode\":", 7);
    n = 7;
    m[n++] = (char)('0' + out->mode);
    if (out->time_start >= 0) {
        memcpy(m + n, ",\"time\":\"", 9);
        n += 9;
        memcpy(m + n, buf + out->time_start, (size_t)out->time_len);
        n += out->time_len;
        m[n++] = '"';
    }
    for (int k = 0; k < GW_TPV_NUMBERS; k++) {
        if (!(out->present & (1u << k)))
            continue;
        const char *name = k == GW_ALT && !out->alt_msl_named ? "altMSL" : gw_tpv_names[k];
        size_t name_len = strlen(name);
        if (n + (int64_t)name_len + 4 + len[k] + 2 > cap) /* a number grows by ".0" at most */
            return;
        m[n++] = ',';
        m[n++] = '"';
        memcpy(m + n, name, name_len);
        n += (int64_t)name_len;
        m[n++] = '"';
        m[n++] = ':';
        int64_t w = gw_tpv_number(buf + at[k], len[k], integer[k], m + n);
        if (w < 0)
            return;
        n += w;
    }
    out->members_len = n;
}

static int gw_word(gw_cursor *c, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

static int gw_key(const uint8_t *s, int64_t len)
{
    if (len == 5 && memcmp(s, "class", 5) == 0)
        return GW_KEY_CLASS;
    if (len == 4 && memcmp(s, "mode", 4) == 0)
        return GW_KEY_MODE;
    if (len == 4 && memcmp(s, "time", 4) == 0)
        return GW_KEY_TIME;
    for (int k = 0; k < GW_TPV_NUMBERS; k++) {
        if ((size_t)len == strlen(gw_tpv_names[k]) && memcmp(s, gw_tpv_names[k], (size_t)len) == 0)
            return k;
    }
    return GW_KEY_OTHER;
}

int gw_tpv_parse(const uint8_t *buf, int64_t n, gw_tpv *out)
{
    gw_cursor c = {buf, buf + n};
    int is_tpv = 0;
    int64_t at[GW_TPV_NUMBERS], len[GW_TPV_NUMBERS]; /* each value's literal */
    int integer_at[GW_TPV_NUMBERS];
    out->mode = 1;
    out->present = 0;
    out->alt_msl_named = 0;
    out->time_start = -1;
    out->time_len = 0;
    gw_skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return 0;
    c.p++;
    gw_skip_ws(&c);
    if (c.p < c.end && *c.p == '}')
        return 0; /* {}: no class */
    for (;;) {
        const uint8_t *name;
        int64_t name_len;
        gw_skip_ws(&c);
        if (!gw_string(&c, &name, &name_len))
            return 0;
        gw_skip_ws(&c);
        if (c.p >= c.end || *c.p != ':')
            return 0;
        c.p++;
        gw_skip_ws(&c);
        if (c.p >= c.end)
            return 0;
        int key = gw_key(name, name_len);
        if (key == GW_ALT_MSL)
            out->alt_msl_named = 1; /* "altMSL" of any value keeps "alt" its name */
        /* The last member of a name is the one that counts: what an earlier
         * one said is forgotten, and this one says what it can. */
        if (key == GW_KEY_CLASS)
            is_tpv = 0;
        else if (key == GW_KEY_TIME)
            out->time_start = -1;
        else if (key == GW_KEY_MODE)
            out->mode = 1;
        else if (key >= 0)
            out->present &= ~(1u << key);
        uint8_t b = *c.p;
        if (b == '"') {
            const uint8_t *s;
            int64_t len;
            if (!gw_string(&c, &s, &len))
                return 0;
            if (key == GW_KEY_CLASS)
                is_tpv = len == 3 && memcmp(s, "TPV", 3) == 0;
            else if (key == GW_KEY_TIME) {
                out->time_start = s - buf;
                out->time_len = len;
            }
        } else if (b == '-' || gw_digit(b)) {
            double v;
            int integer;
            const uint8_t *literal = c.p;
            if (!gw_number(&c, &v, &integer))
                return 0;
            if (key == GW_KEY_MODE && integer && (v == 1.0 || v == 2.0 || v == 3.0)) {
                out->mode = (int32_t)v;
            } else if (key >= 0 && isfinite(v)) {
                out->values[key] = v;
                out->present |= 1u << key;
                at[key] = literal - buf;
                len[key] = c.p - literal;
                integer_at[key] = integer;
            }
        } else if (!gw_word(&c, "true") && !gw_word(&c, "false") && !gw_word(&c, "null")) {
            return 0; /* an object, an array, NaN, Infinity, or no JSON */
        }
        gw_skip_ws(&c);
        if (c.p >= c.end)
            return 0;
        if (*c.p == ',') {
            c.p++;
            continue;
        }
        if (*c.p != '}')
            return 0;
        c.p++;
        break;
    }
    gw_skip_ws(&c);
    if (c.p != c.end || !is_tpv)
        return 0;
    int lat = (out->present >> GW_LAT) & 1, lon = (out->present >> GW_LON) & 1;
    if (lat != lon)
        return 0;
    if (lat && !(out->values[GW_LAT] >= -90 && out->values[GW_LAT] <= 90 &&
                 out->values[GW_LON] >= -180 && out->values[GW_LON] <= 180))
        return 0;
    gw_tpv_members(buf, out, at, len, integer_at);
    return 1;
}
