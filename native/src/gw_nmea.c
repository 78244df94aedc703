/*
 * NMEA 0183 framing: one pass over a block of serial bytes finds every
 * sentence, checks its checksum and reports where it lies, so that Python
 * only splits the fields of good sentences. Survives garbage and binary
 * bytes, resyncs at '$', accepts sentences glued without CR/LF when their
 * checksum closes them, and never holds more than one partial sentence.
 */
#include "gateway.h"

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

int64_t gw_nmea_scan(const uint8_t *buf, int64_t n, int64_t max_len, int final,
                     int64_t *out, int64_t capacity, int64_t *consumed, int64_t *garbage)
{
    int64_t count = 0, pos = 0;
    *consumed = 0;
    while (pos < n && count < capacity) {
        int64_t s = pos;
        while (s < n && buf[s] != '$')
            s++;
        *garbage += s - pos;
        if (s >= n) {
            pos = n;
            break;
        }
        int64_t e = s + 1;
        while (e < n && buf[e] != '\r' && buf[e] != '\n' && buf[e] != '$' &&
               e - s <= max_len + 8)
            e++;
        int status;
        int64_t next;
        if (e < n && (buf[e] == '\r' || buf[e] == '\n')) {
            status = gw_judge(buf, s, e, max_len);
            next = e + 1;
        } else if (e < n && buf[e] == '$') {
            /* Another sentence starts: this one is complete only if its
             * checksum closes it (sentences glued without CR/LF). */
            status = gw_closed_by_checksum(buf, s, e) ? gw_judge(buf, s, e, max_len)
                                                      : GW_NMEA_TRUNCATED;
            next = e;
        } else if (e - s > max_len + 8) {
            status = GW_NMEA_TOO_LONG;
            next = e;
        } else if (final) {
            status = gw_closed_by_checksum(buf, s, n) ? gw_judge(buf, s, n, max_len)
                                                      : GW_NMEA_TRUNCATED;
            e = n;
            next = n;
        } else {
            /* A partial sentence: keep it for the next block. */
            pos = s;
            *consumed = s;
            return count;
        }
        out[3 * count] = s;
        out[3 * count + 1] = e;
        out[3 * count + 2] = status;
        count++;
        pos = next;
        while (pos < n && (buf[pos] == '\r' || buf[pos] == '\n'))
            pos++;
    }
    *consumed = pos;
    return count;
}
