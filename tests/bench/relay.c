/* The ingest benchmark's bound: a relay in C that does no work. It
 * subscribes to one topic (MQTT 5, QoS 1), publishes every message it gets
 * to another (QoS 1), and acknowledges an input only once the broker has
 * acknowledged its copy: the daemon's flow (manual acks after the result's
 * PUBACK) with nothing in between. It keeps to the broker's Receive Maximum
 * and asks for 1000 inputs in flight, as the daemon does.
 *
 *     relay HOST PORT IN_TOPIC OUT_TOPIC [OUT_BYTES]
 *
 * OUT_BYTES: each copy is padded with spaces to at least that many bytes, so
 * that what goes out is the size of the daemon's records rather than of its
 * inputs (a gps_fix record is about four times its TPV input).
 *
 * Prints "ready" once subscribed; runs until killed. One process, one
 * socket, reads of up to 64 KiB and one write per read.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RECEIVE_MAXIMUM 1000

static int sock;
static unsigned char *out;
static size_t out_len, out_cap;

static void die(const char *what) {
    fprintf(stderr, "relay: %s: %s\n", what, errno ? strerror(errno) : "protocol error");
    exit(1);
}

/* n more bytes at the end of what is to be sent: where they go */
static unsigned char *room(size_t n) {
    if (out_len + n > out_cap) {
        out_cap = (out_len + n) * 2;
        out = realloc(out, out_cap);
        if (!out) die("realloc");
    }
    out_len += n;
    return out + out_len - n;
}

static void put(const void *data, size_t n) { memcpy(room(n), data, n); }

static void put_byte(unsigned char b) { put(&b, 1); }

static void put_spaces(size_t n) { memset(room(n), ' ', n); }

static void put_u16(unsigned v) {
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    put(b, 2);
}

static void put_varint(size_t v) {
    do {
        unsigned char b = v % 128;
        v /= 128;
        put_byte(v ? b | 0x80 : b);
    } while (v);
}

static void flush_out(void) {
    size_t at = 0;
    while (at < out_len) {
        ssize_t n = send(sock, out + at, out_len - at, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("send");
        at += (size_t)n;
    }
    out_len = 0;
}

/* A message waiting for room in the broker's window. */
struct waiting { unsigned in_id; unsigned char *payload; size_t len; };
static struct waiting queue[65536];
static unsigned q_head, q_tail;  /* ring indices, mod 65536 */
static unsigned in_of[65536];    /* our packet id -> IN_USE | the input's (0: free) */
#define IN_USE 0x10000u             /* a QoS 0 input has id 0 */
static unsigned next_id = 1, in_flight, window = 65535;
static const char *out_topic;
static size_t out_bytes;            /* the copies' least size (OUT_BYTES) */

static void publish(unsigned in_id, const unsigned char *payload, size_t len) {
    unsigned id = next_id;
    while (in_of[id]) id = id == 65535 ? 1 : id + 1;
    next_id = id == 65535 ? 1 : id + 1;
    in_of[id] = IN_USE | in_id;
    size_t topic_len = strlen(out_topic);
    size_t pad = len < out_bytes ? out_bytes - len : 0;
    put_byte(0x32);
    put_varint(2 + topic_len + 2 + 1 + len + pad);
    put_u16((unsigned)topic_len);
    put(out_topic, topic_len);
    put_u16(id);
    put_byte(0);  /* no properties */
    put(payload, len);
    put_spaces(pad);
    in_flight++;
}

static void puback(unsigned id) {
    unsigned char b[4] = {0x40, 2, (unsigned char)(id >> 8), (unsigned char)id};
    put(b, 4);
}

static size_t varint(const unsigned char *p, size_t n, size_t *used) {
    size_t v = 0, mul = 1;
    for (size_t i = 0; i < n && i < 4; i++) {
        v += (p[i] & 0x7F) * mul;
        if (!(p[i] & 0x80)) { *used = i + 1; return v; }
        mul *= 128;
    }
    *used = 0;
    return 0;
}

static void handle(unsigned char type, const unsigned char *body, size_t len) {
    switch (type >> 4) {
    case 2: {  /* CONNACK: the broker's Receive Maximum, if it says one */
        if (len < 3 || body[1] != 0) die("connack");
        size_t used, plen = varint(body + 2, len - 2, &used);
        const unsigned char *p = body + 2 + used, *end = p + plen;
        while (p < end) {
            unsigned char prop = *p++;
            if (prop == 0x21) { window = (p[0] << 8) | p[1]; p += 2; }
            else if (prop == 0x24 || prop == 0x25 || prop == 0x28 || prop == 0x29 ||
                     prop == 0x2A) p += 1;
            else if (prop == 0x13 || prop == 0x22) p += 2;
            else if (prop == 0x11 || prop == 0x27) p += 4;
            else return;  /* strings and pairs: the window is what matters */
        }
        return;
    }
    case 3: {  /* PUBLISH */
        unsigned qos = (type >> 1) & 3;
        if (len < 2) die("publish");
        size_t tlen = (body[0] << 8) | body[1], at = 2 + tlen;
        unsigned in_id = 0;
        if (qos) { in_id = (body[at] << 8) | body[at + 1]; at += 2; }
        size_t used, plen = varint(body + at, len - at, &used);
        at += used + plen;
        if (at > len) die("publish");
        if (in_flight < window && q_head == q_tail) {
            publish(in_id, body + at, len - at);
        } else {
            struct waiting *w = &queue[q_tail++ & 0xFFFF];
            w->in_id = in_id;
            w->len = len - at;
            w->payload = malloc(w->len ? w->len : 1);
            memcpy(w->payload, body + at, w->len);
        }
        return;
    }
    case 4: {  /* PUBACK of our copy: the input is done */
        if (len < 2) die("puback");
        unsigned id = (body[0] << 8) | body[1];
        if (!in_of[id]) return;  /* not ours */
        unsigned in_id = in_of[id] & 0xFFFFu;
        in_of[id] = 0;
        in_flight--;
        if (in_id) puback(in_id);
        while (in_flight < window && q_head != q_tail) {
            struct waiting *w = &queue[q_head++ & 0xFFFF];
            publish(w->in_id, w->payload, w->len);
            free(w->payload);
        }
        return;
    }
    default:  /* SUBACK, PINGRESP */
        return;
    }
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: relay HOST PORT IN_TOPIC OUT_TOPIC [OUT_BYTES]\n");
        return 2;
    }
    out_topic = argv[4];
    if (argc == 6)
        out_bytes = strtoul(argv[5], NULL, 10);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai)) die("getaddrinfo");
    sock = socket(ai->ai_family, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, ai->ai_addr, ai->ai_addrlen)) die("connect");
    int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    /* CONNECT: MQTT 5, clean start, keep-alive 60 s, Receive Maximum */
    char client_id[32];
    snprintf(client_id, sizeof client_id, "relay-%d", (int)getpid());
    size_t id_len = strlen(client_id);
    put_byte(0x10);
    put_varint(10 + 4 + 2 + id_len);
    put_u16(4); put("MQTT", 4); put_byte(5); put_byte(0x02); put_u16(60);
    put_byte(3); put_byte(0x21); put_u16(RECEIVE_MAXIMUM);
    put_u16((unsigned)id_len); put(client_id, id_len);
    /* SUBSCRIBE IN_TOPIC, QoS 1 */
    size_t in_len = strlen(argv[3]);
    put_byte(0x82);
    put_varint(2 + 1 + 2 + in_len + 1);
    put_u16(1); put_byte(0); put_u16((unsigned)in_len); put(argv[3], in_len); put_byte(1);
    flush_out();

    static unsigned char buf[1 << 20];
    size_t have = 0;
    int ready = 0;
    for (;;) {
        ssize_t n = recv(sock, buf + have, 65536, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("recv");
        have += (size_t)n;
        size_t at = 0;
        while (have - at >= 2) {
            size_t used, len = varint(buf + at + 1, have - at - 1, &used);
            if (!used || have - at < 1 + used + len) break;
            if ((buf[at] >> 4) == 9 && !ready) {  /* SUBACK */
                ready = 1;
                printf("ready\n");
                fflush(stdout);
            }
            handle(buf[at], buf + at + 1 + used, len);
            at += 1 + used + len;
        }
        memmove(buf, buf + at, have - at);
        have -= at;
        if (have > sizeof buf - 65536) die("a packet over the buffer");
        if (out_len) flush_out();
    }
}
