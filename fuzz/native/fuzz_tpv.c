/*
 * libFuzzer target: the plain-TPV reader (gw_tpv.c).
 *
 * Input: a document, as hostile as it comes, allocated to the byte so that a
 * read past its end is caught. A document read must say what the reader
 * promises: a mode of 1 to 3, a time inside the document, finite values, a
 * position given whole and in range, members within their buffer that
 * start with the mode. And a reader that stops at the document's end must
 * stop at any cut of it: read in full, the document must not read once its
 * last byte is gone unless that byte was whitespace.
 */
#include <math.h>

#include "gateway.h"
#include "harness.h"

static int parse(const uint8_t *data, size_t size, gw_tpv *out)
{
    uint8_t *exact = exact_copy(data, size);
    int got = gw_tpv_parse(exact, (int64_t)size, out);
    free(exact);
    CHECK(got == 0 || got == 1);
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_tpv out;
    if (!parse(data, size, &out))
        return 0;
    CHECK(out.mode >= 1 && out.mode <= 3);
    CHECK(out.time_start == -1 ||
          (out.time_start >= 0 && out.time_len >= 0 &&
           out.time_start + out.time_len <= (int64_t)size));
    CHECK(out.present < (1u << GW_TPV_NUMBERS));
    for (int k = 0; k < GW_TPV_NUMBERS; k++)
        CHECK(!(out.present & (1u << k)) || isfinite(out.values[k]));
    int lat = out.present & 1, lon = (out.present >> 1) & 1;
    CHECK(lat == lon);
    CHECK(!lat || (fabs(out.values[0]) <= 90 && fabs(out.values[1]) <= 180));
    CHECK(out.members_len >= -1 && out.members_len <= (int64_t)sizeof out.members);
    CHECK(out.members_len < 0 || memcmp(out.members, "\"mode\":", 7) == 0);
    uint8_t last = data[size - 1];
    if (last != ' ' && last != '\t' && last != '\n' && last != '\r') {
        gw_tpv cut;
        CHECK(!parse(data, size - 1, &cut));
    }
    return 0;
}
