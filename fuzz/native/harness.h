/*
 * What the libFuzzer targets share: a check that aborts (so that libFuzzer
 * keeps the input as a crash), and reading an input as bytes and numbers.
 */
#ifndef GATEWAYD_FUZZ_HARNESS_H
#define GATEWAYD_FUZZ_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* An input read from `at` on; past its end, every byte and number is 0. */
typedef struct {
    const uint8_t *data;
    size_t size, at;
    const double *table; /* 32 values, one picked by each byte; NULL: 8 raw bytes a number */
} input;

static inline int input_byte(input *in) { return in->at < in->size ? in->data[in->at++] : 0; }

static inline double input_number(input *in)
{
    double v = 0.0;
    if (in->table)
        return in->table[input_byte(in) % 32];
    if (in->at + 8 <= in->size)
        memcpy(&v, in->data + in->at, 8);
    in->at += 8;
    return v;
}

/* How many numbers of `per_item` each the rest of the input holds. */
static inline int64_t input_items(const input *in, size_t per_item)
{
    size_t bytes = per_item * (in->table ? 1 : 8);
    return in->at < in->size ? (int64_t)((in->size - in->at) / bytes) : 0;
}

/* A copy allocated to the byte, so that AddressSanitizer catches a read or a
 * write past it. */
static inline void *exact_copy(const void *from, size_t bytes)
{
    void *to = malloc(bytes > 0 ? bytes : 1);
    CHECK(to != NULL);
    if (bytes)
        memcpy(to, from, bytes);
    return to;
}

#endif
