/*
 * libFuzzer target: LZF decompression (gw_lzf.c), for PCD binary_compressed.
 *
 * Input: byte 0 picks the mode.
 *   even: bytes 1-2 are the output size (0 to 65535), the rest the
 *         compressed stream, as hostile as it comes. Input and output are
 *         allocated to the byte, so that a read past in_len or a write past
 *         out_len is caught. A stream that decodes must decode the same into
 *         any larger buffer, and one that decodes into a larger buffer to no
 *         more than out_len bytes must decode into out_len.
 *   odd:  the rest is a list of operations (literal runs and back
 *         references, LZF's two kinds) that this file encodes, tracking what
 *         they must decode to; the stream must decode to exactly that, fail
 *         into a buffer one byte short, and fail when cut by one byte.
 */
#include "gateway.h"
#include "harness.h"

static int64_t decompress(const uint8_t *in, int64_t in_len, int64_t out_len, uint8_t **out)
{
    uint8_t *exact_in = exact_copy(in, (size_t)in_len);
    *out = malloc((size_t)(out_len > 0 ? out_len : 1));
    CHECK(*out != NULL);
    int64_t got = gw_lzf_decompress(exact_in, in_len, *out, out_len);
    free(exact_in);
    CHECK(got == -1 || (got >= 0 && got <= out_len));
    return got;
}

static void hostile(const uint8_t *data, size_t size)
{
    if (size < 3)
        return;
    int64_t out_len = data[1] | data[2] << 8;
    const uint8_t *in = data + 3;
    int64_t in_len = (int64_t)size - 3;
    uint8_t *out, *big;
    int64_t got = decompress(in, in_len, out_len, &out);
    int64_t big_len = out_len + 1 + out_len / 2;
    int64_t got_big = decompress(in, in_len, big_len, &big);
    if (got >= 0)
        CHECK(got_big == got && memcmp(out, big, (size_t)got) == 0);
    if (got_big >= 0 && got_big <= out_len)
        CHECK(got == got_big);
    free(out);
    free(big);
}

typedef struct {
    uint8_t *bytes;
    int64_t len, cap;
} buffer;

static void put(buffer *b, uint8_t byte)
{
    if (b->len == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->bytes = realloc(b->bytes, (size_t)b->cap);
        CHECK(b->bytes != NULL);
    }
    b->bytes[b->len++] = byte;
}

static void constructed(const uint8_t *data, size_t size)
{
    buffer stream = {0}, expect = {0};
    size_t at = 1;
    while (at < size) {
        uint8_t op = data[at++];
        if (op < 128 || expect.len == 0) {
            /* a literal run of 1 to 32 bytes */
            int64_t len = 1 + (op & 31);
            put(&stream, (uint8_t)(len - 1));
            for (int64_t k = 0; k < len; k++) {
                uint8_t byte = at < size ? data[at++] : (uint8_t)k;
                put(&stream, byte);
                put(&expect, byte);
            }
        } else {
            /* a back reference: 3 to 264 bytes from 1 to 8192 back */
            uint8_t a = at < size ? data[at++] : 0, b = at < size ? data[at++] : 0;
            int64_t len = 3 + (op & 1 ? a : a % 8);
            int64_t back = 1 + (((int64_t)(op & 0x1f) << 8 | b) % expect.len);
            int64_t code = len - 2, high = (back - 1) >> 8;
            if (code < 7) {
                put(&stream, (uint8_t)(code << 5 | high));
            } else {
                put(&stream, (uint8_t)(7 << 5 | high));
                put(&stream, (uint8_t)(code - 7));
            }
            put(&stream, (uint8_t)((back - 1) & 0xff));
            int64_t from = expect.len - back;
            for (int64_t k = 0; k < len; k++)
                put(&expect, expect.bytes[from + k]);
        }
    }
    uint8_t *out;
    CHECK(decompress(stream.bytes, stream.len, expect.len, &out) == expect.len);
    CHECK(expect.len == 0 || memcmp(out, expect.bytes, (size_t)expect.len) == 0);
    free(out);
    if (expect.len > 0) {
        CHECK(decompress(stream.bytes, stream.len, expect.len - 1, &out) == -1);
        free(out);
        CHECK(decompress(stream.bytes, stream.len - 1, expect.len, &out) == -1);
        free(out);
    }
    free(stream.bytes);
    free(expect.bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        constructed(data, size);
    else
        hostile(data, size);
    return 0;
}
