/* MQTT packets read in a run, from a buffer of what the broker sent.
 *
 * gatewayd._paho reads most of what a broker sends to the daemon without
 * paho: the PUBLISH packets of QoS 0 and 1 that carry no properties, and
 * PUBACKs. This finds a run of them, whole, where the buffer holds them, and
 * says where each part is; Python then slices and hands them on. The run
 * stops before anything else (another packet type, QoS 2, properties, a
 * topic alias, a malformed or unfinished packet), which Python reads one
 * packet at a time as before, with paho's reader where it must. */

#include "gateway.h"

int64_t gw_mqtt_scan(const uint8_t *buf, int64_t n, int64_t pos, int v5, int publishes,
                     int64_t *out, int64_t capacity, int64_t *end)
{
    int64_t count = 0;
    while (count < capacity && pos + 2 <= n) {
        uint8_t header = buf[pos];
        int64_t length = 0, start = pos + 1;
        int shift = 0;
        for (;;) { /* the remaining length: at most four bytes */
            if (start >= n || shift > 21)
                goto done;
            uint8_t byte = buf[start++];
            length |= (int64_t)(byte & 0x7F) << shift;
            if (!(byte & 0x80))
                break;
            shift += 7;
        }
        int64_t stop = start + length;
        if (stop > n)
            break;
        int64_t *e = out + count * GW_MQTT_ENTRY;
        uint8_t kind = header & 0xF0;
        if (kind == 0x30) {
            int qos = (header & 0x06) >> 1;
            if (!publishes || qos > 1 || length < 2)
                break;
            int64_t at = start + 2 + ((int64_t)buf[start] << 8 | buf[start + 1]);
            int64_t topic_end = at;
            if (at == start + 2 || at > stop)
                break; /* a topic alias, or malformed */
            int64_t mid = 0;
            if (qos) {
                if (at + 2 > stop)
                    break;
                mid = (int64_t)buf[at] << 8 | buf[at + 1];
                at += 2;
            }
            if (v5) {
                if (at >= stop || buf[at] != 0)
                    break; /* properties */
                at += 1;
            }
            e[1] = start + 2;
            e[2] = topic_end;
            e[3] = mid;
            e[4] = at;
            e[5] = stop;
        } else if (kind == 0x40 && (length == 2 || (v5 && length >= 3))) {
            e[1] = (int64_t)buf[start] << 8 | buf[start + 1];
            e[2] = length >= 3 ? buf[start + 2] : 0;
            e[3] = 0;
            e[4] = start;
            e[5] = stop;
        } else {
            break;
        }
        e[0] = header;
        e[6] = stop;
        pos = stop;
        count++;
    }
done:
    *end = pos;
    return count;
}
