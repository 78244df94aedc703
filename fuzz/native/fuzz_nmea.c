/*
 * libFuzzer target: NMEA framing, parsing and fix assembly (gw_nmea.c), and
 * the fixes written as JSON (gw_fix_json).
 *
 * Input: two bytes of set-up, then the serial stream.
 *   byte 0: bits 0-2 pick the fix capacity of each call (1 to 1024, so that
 *           the "out of room" return runs), bits 3-7 the longest block;
 *   byte 1: the seed of the block lengths.
 * The stream is fed as gatewayd.nmea.NmeaDecoder feeds it (the unconsumed
 * partial sentence is kept and put before the next block; a call that fills
 * its capacity is repeated), once whole with room for 1024 fixes and once
 * in blocks, then flushed. As tests/test_fuzz_properties.py states for the
 * Python decoder, both must give the same fixes (offsets included) and the
 * same counts. gw_nmea_scan must frame the stream as the decoder counted
 * it. Every fix must then come out of gw_fix_json as numbers that read back
 * to its values, the same into a buffer of exactly that size, and not at all
 * (-1, nothing written past it) into a byte less.
 */
#include "gateway.h"
#include "harness.h"

#define MAX_SENTENCE 130 /* gatewayd.nmea.MAX_SENTENCE */
#define WHOLE_CAPACITY 1024 /* gatewayd.nmea._FIX_CAPACITY */
#define JSON_PER_FIX 512    /* gatewayd.nmea._JSON_PER_FIX */

typedef struct {
    gw_nmea st;
    uint8_t *pending;
    int64_t pending_len;
    int64_t offset; /* stream offset of pending[0] */
    int64_t capacity;
    gw_fix *out; /* exactly capacity fixes, so that a write past them is caught */
    gw_fix *fixes;
    int64_t n_fixes, cap_fixes;
} decoder;

static void decoder_init(decoder *d, int64_t capacity)
{
    memset(d, 0, sizeof *d);
    gw_nmea_init(&d->st);
    d->capacity = capacity;
    d->out = malloc((size_t)capacity * sizeof *d->out);
    CHECK(d->out != NULL);
}

static void decoder_free(decoder *d)
{
    free(d->pending);
    free(d->out);
    free(d->fixes);
}

static void keep(decoder *d, const gw_fix *fixes, int64_t n)
{
    if (n == 0)
        return;
    if (d->n_fixes + n > d->cap_fixes) {
        d->cap_fixes = (d->n_fixes + n) * 2;
        d->fixes = realloc(d->fixes, (size_t)d->cap_fixes * sizeof *d->fixes);
        CHECK(d->fixes != NULL);
    }
    memcpy(d->fixes + d->n_fixes, fixes, (size_t)n * sizeof *fixes);
    d->n_fixes += n;
}

/* NmeaDecoder._decode: the pending bytes and the block, in calls of at most
 * capacity fixes; what is left over waits for the next block. */
static void feed(decoder *d, const uint8_t *data, int64_t len, int final)
{
    if (final && d->pending_len == 0)
        return; /* flush_block: nothing pending, no call */
    int64_t n = d->pending_len + len;
    uint8_t *buf = malloc((size_t)(n > 0 ? n : 1)); /* exact, for ASan */
    CHECK(buf != NULL);
    if (d->pending_len)
        memcpy(buf, d->pending, (size_t)d->pending_len);
    if (len)
        memcpy(buf + d->pending_len, data, (size_t)len);
    int64_t start = 0;
    for (;;) {
        int64_t consumed = -1;
        int64_t count = gw_nmea_decode(&d->st, buf + start, n - start, d->offset + start,
                                       MAX_SENTENCE, final, d->out, d->capacity, &consumed);
        CHECK(count >= 0 && count <= d->capacity);
        CHECK(consumed >= 0 && consumed <= n - start);
        keep(d, d->out, count);
        start += consumed;
        if (consumed == 0 || count < d->capacity)
            break;
    }
    free(d->pending);
    d->pending_len = n - start;
    d->pending = malloc((size_t)(d->pending_len > 0 ? d->pending_len : 1));
    CHECK(d->pending != NULL);
    memcpy(d->pending, buf + start, (size_t)d->pending_len);
    d->offset += start;
    free(buf);
    /* At most one partial sentence waits; the end of the stream takes it. */
    CHECK(d->pending_len <= MAX_SENTENCE + 9);
    CHECK(!final || d->pending_len == 0);
}

static uint32_t next_random(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

static const char *const value_names[GW_FIX_FIELDS] = {
    "status", "lat", "lon", "altMSL", "altHAE", "geoidSep", "speed", "track", "climb",
    "magvar", "eph", "epx", "epy", "epv"};

/* One fix's members, as gw_fix_json wrote them: the fields it has, in order,
 * each a number that reads back to the value. */
static void check_members(const gw_fix *fix, const char *text, int64_t len)
{
    int64_t at = 0;
    for (int k = 0; k < GW_FIX_FIELDS; k++) {
        if (!(fix->present & (1u << k)))
            continue;
        char head[32];
        int head_len = snprintf(head, sizeof head, ",\"%s\":", value_names[k]);
        CHECK(at + head_len <= len && memcmp(text + at, head, (size_t)head_len) == 0);
        at += head_len;
        int64_t end = at;
        while (end < len && text[end] != ',')
            end++;
        char number[64];
        CHECK(end > at && end - at < (int64_t)sizeof number);
        memcpy(number, text + at, (size_t)(end - at));
        number[end - at] = 0;
        char *stop = NULL;
        double v = strtod(number, &stop);
        CHECK(*stop == 0);
        CHECK(v == fix->values[k]);
        if (k == 0) /* status: an integer, written without a point */
            CHECK(strchr(number, '.') == NULL);
        else
            CHECK(strchr(number, '.') != NULL && strchr(number, 'e') == NULL);
        at = end;
    }
    CHECK(at == len);
}

static void check_json(const gw_fix *fixes, int64_t n)
{
    if (n == 0)
        return;
    int64_t cap = n * JSON_PER_FIX;
    char *out = malloc((size_t)cap);
    int64_t *ends = malloc((size_t)n * sizeof *ends);
    CHECK(out != NULL && ends != NULL);
    int64_t used = gw_fix_json(fixes, n, out, cap, ends);
    CHECK(used >= 0 && used <= cap);
    int64_t start = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ends[i] < 0) {
            CHECK(ends[i] == -1);
            continue;
        }
        CHECK(ends[i] >= start && ends[i] <= used);
        check_members(&fixes[i], out + start, ends[i] - start);
        start = ends[i];
    }
    CHECK(start == used);
    /* Exactly the room it takes: the same bytes. */
    char *exact = malloc((size_t)(used > 0 ? used : 1));
    int64_t *exact_ends = malloc((size_t)n * sizeof *exact_ends);
    CHECK(exact != NULL && exact_ends != NULL);
    CHECK(gw_fix_json(fixes, n, exact, used, exact_ends) == used);
    CHECK(memcmp(exact, out, (size_t)used) == 0);
    CHECK(memcmp(exact_ends, ends, (size_t)n * sizeof *ends) == 0);
    free(exact);
    /* A byte less: refused, and nothing written past it. */
    if (used > 0) {
        char *short_out = malloc((size_t)used - 1 > 0 ? (size_t)used - 1 : 1);
        CHECK(short_out != NULL);
        CHECK(gw_fix_json(fixes, n, short_out, used - 1, exact_ends) == -1);
        free(short_out);
    }
    free(exact_ends);
    free(out);
    free(ends);
}

/* gw_nmea_scan frames the stream as the decoder did: as many sentences as
 * the decoder counted, whatever became of them, and as much garbage. */
static void check_scan(const uint8_t *data, int64_t n, const gw_nmea_stats *stats)
{
    int64_t *spans = malloc((size_t)(3 * (n > 0 ? n : 1)) * sizeof *spans);
    CHECK(spans != NULL);
    int64_t consumed = -1, garbage = 0;
    int64_t count = gw_nmea_scan(data, n, MAX_SENTENCE, 1, spans, n, &consumed, &garbage);
    CHECK(consumed == n);
    CHECK(garbage == stats->garbage_bytes);
    CHECK(count == stats->sentences + stats->bad_checksum + stats->too_long + stats->truncated +
                       stats->skipped_proprietary + stats->skipped_unknown + stats->malformed);
    int64_t last_end = 0;
    for (int64_t k = 0; k < count; k++) {
        int64_t s = spans[3 * k], e = spans[3 * k + 1], status = spans[3 * k + 2];
        CHECK(s >= last_end && s < e && e <= n && data[s] == '$');
        CHECK(status >= GW_NMEA_OK && status <= GW_NMEA_NO_CHECKSUM);
        last_end = e;
    }
    free(spans);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int64_t capacities[] = {1, 2, 3, 4, 5, 8, 17, WHOLE_CAPACITY};
    if (size < 2)
        return 0;
    int64_t capacity = capacities[data[0] & 7];
    int64_t longest = 1 + (data[0] >> 3) * 9; /* 1 to 280 bytes */
    uint32_t seed = 0x9e3779b9u ^ data[1];
    const uint8_t *stream = data + 2;
    int64_t n = (int64_t)size - 2;

    decoder whole, blocks;
    decoder_init(&whole, WHOLE_CAPACITY);
    feed(&whole, stream, n, 0);
    feed(&whole, NULL, 0, 1);

    decoder_init(&blocks, capacity);
    for (int64_t at = 0; at < n;) {
        int64_t len = 1 + (int64_t)(next_random(&seed) % (uint32_t)longest);
        if (len > n - at)
            len = n - at;
        feed(&blocks, stream + at, len, 0);
        at += len;
    }
    feed(&blocks, NULL, 0, 1);

    CHECK(whole.n_fixes == blocks.n_fixes);
    CHECK(whole.n_fixes == 0 ||
          memcmp(whole.fixes, blocks.fixes, (size_t)whole.n_fixes * sizeof(gw_fix)) == 0);
    CHECK(memcmp(&whole.st.stats, &blocks.st.stats, sizeof whole.st.stats) == 0);
    CHECK(whole.st.enders == blocks.st.enders);
    CHECK(whole.st.stats.fixes == whole.n_fixes);

    check_scan(stream, n, &whole.st.stats);
    check_json(whole.fixes, whole.n_fixes);

    decoder_free(&whole);
    decoder_free(&blocks);
    return 0;
}
