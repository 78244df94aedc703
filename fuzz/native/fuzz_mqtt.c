/*
 * libFuzzer target: MQTT packets read in a run (gw_mqtt_scan).
 *
 * Input: byte 0 picks MQTT 5 (bit 0) and whether PUBLISH packets are taken
 * (bit 1); the rest is what a broker sent, as hostile as it comes, allocated
 * to the byte so that a read past its end is caught. Every entry must lie
 * inside the packet it names, packets must follow one another from the
 * start, and a run read in pieces (the first k entries, then on from where
 * they end) must be the run read at once.
 */
#include "gateway.h"
#include "harness.h"

#define RUN 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int v5 = data[0] & 1, publishes = (data[0] >> 1) & 1;
    int64_t n = (int64_t)size - 1;
    uint8_t *buf = exact_copy(data + 1, (size_t)n);
    int64_t out[RUN * GW_MQTT_ENTRY], end = -1;
    int64_t count = gw_mqtt_scan(buf, n, 0, v5, publishes, out, RUN, &end);
    CHECK(count >= 0 && count <= RUN && end >= 0 && end <= n);
    int64_t at = 0;
    for (int64_t k = 0; k < count; k++) {
        const int64_t *e = out + k * GW_MQTT_ENTRY;
        int64_t header = e[0], stop = e[6];
        CHECK(header == buf[at] && stop > at + 1 && stop <= n);
        if ((header & 0xF0) == 0x30) {
            CHECK(publishes && ((header >> 1) & 3) <= 1);
            CHECK(at < e[1] && e[1] < e[2] && e[2] <= e[4] && e[4] <= e[5] && e[5] == stop);
            CHECK(e[3] >= 0 && e[3] <= 65535 && (((header >> 1) & 3) || e[3] == 0));
        } else {
            CHECK((header & 0xF0) == 0x40);
            CHECK(e[1] >= 0 && e[1] <= 65535 && e[2] >= 0 && e[2] <= 255);
            CHECK(e[4] > at && e[5] == stop && e[5] - e[4] >= 2);
            CHECK(v5 || e[5] - e[4] == 2);
        }
        at = stop;
    }
    CHECK(at == end);
    if (count > 1) { /* in two pieces */
        int64_t first = count / 2, mid_end = -1, rest_end = -1;
        int64_t part[RUN * GW_MQTT_ENTRY];
        CHECK(gw_mqtt_scan(buf, n, 0, v5, publishes, part, first, &mid_end) == first);
        CHECK(mid_end == out[(first - 1) * GW_MQTT_ENTRY + 6]);
        CHECK(gw_mqtt_scan(buf, n, mid_end, v5, publishes, part, RUN, &rest_end) >= count - first);
        CHECK(memcmp(part, out + first * GW_MQTT_ENTRY,
                     (size_t)(count - first) * GW_MQTT_ENTRY * sizeof(int64_t)) == 0);
    }
    free(buf);
    return 0;
}
