/*
 * LZF decompression, for PCD files written DATA binary_compressed. Bounded
 * on both sides: a corrupt or hostile stream returns -1, it never writes past
 * the output the header declared.
 */
#include "gateway.h"

int64_t gw_lzf_decompress(const uint8_t *in, int64_t in_len, uint8_t *out, int64_t out_len)
{
    int64_t ip = 0, op = 0;
    while (ip < in_len) {
        unsigned ctrl = in[ip++];
        if (ctrl < 32) {
            int64_t len = (int64_t)ctrl + 1;
            if (ip + len > in_len || op + len > out_len)
                return -1;
            for (int64_t k = 0; k < len; k++)
                out[op + k] = in[ip + k];
            ip += len;
            op += len;
        } else {
            int64_t len = ctrl >> 5;
            int64_t ref = op - ((int64_t)(ctrl & 0x1f) << 8) - 1;
            if (len == 7) {
                if (ip >= in_len)
                    return -1;
                len += in[ip++];
            }
            if (ip >= in_len)
                return -1;
            ref -= in[ip++];
            len += 2;
            if (ref < 0 || op + len > out_len)
                return -1;
            for (int64_t k = 0; k < len; k++) /* may overlap: byte by byte */
                out[op + k] = out[ref + k];
            op += len;
        }
    }
    return op;
}
