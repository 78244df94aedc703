/*
 * libFuzzer target: point-in-zones over ragged arrays (gw_zones.c):
 * gw_zones_new, gw_zones_locate, and gw_zones_intersecting with the zones
 * themselves built as GEOS polygons (gw_build_polygons).
 *
 * The arrays are as gatewayd.geometry.ZoneIndex lets them through: every
 * offsets array runs from 0 to the length of the array it indexes and never
 * decreases. Nothing else is promised (rings may be empty, open or of one
 * position, coordinates anything), so the index must hold up whatever they
 * hold. Where every ring is closed and the coordinates lie on a grid of
 * 1/16 within 2^20 (so that every orientation is decided exactly: with
 * values far apart in magnitude, double-double arithmetic can take a point
 * well off a zone's edges for one on them), the tree's answers for the points
 * on that grid must equal a scan of every zone. Always, pairs come sorted by
 * point, then zone, and in range, and a non-finite point falls in none.
 *
 * Input: byte 0: bit 0 three dimensions for the points, bit 1 numbers from a
 * table (a small grid, halves, and awkward values) rather than eight raw
 * bytes each; byte 1: zones (1 to 24); then per zone its polygons, per
 * polygon its rings, per ring its length and whether it is closed, each a
 * byte, then the coordinates; what is left are the points.
 *
 * This file includes gw_zones.c, to check the index against the zone test it
 * is built on.
 */
#include "../../native/src/gw_zones.c"
#include "harness.h"

#include <float.h>

static const double table[32] = {
    0.0, 1.0, 2.0, 3.0, 4.0, -1.0, -2.0, 0.5, 1.5, 2.5, -0.5, 10.0,
    0.0, 1.0, 2.0, 3.0, 1e-300, -0.0, 1e15, -1e15,
    NAN, INFINITY, -INFINITY, DBL_MAX, -DBL_MAX, 4.9e-324, 1e300, -1e300,
    0.1, 0.2, 0.3, 1.0 / 3.0};

typedef struct {
    int64_t *v;
    int64_t len, cap;
} offsets;

static void push(offsets *o, int64_t value)
{
    if (o->len == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 16;
        o->v = realloc(o->v, (size_t)o->cap * sizeof *o->v);
        CHECK(o->v != NULL);
    }
    o->v[o->len++] = value;
}

/* On the grid where orientation is exact: multiples of 1/16 within 2^20. */
static int on_grid(double v) { return fabs(v) <= 1048576.0 && v * 16.0 == floor(v * 16.0); }

static gw_geos *geos(void)
{
    static gw_geos *g;
    if (g == NULL)
        g = gw_geos_new();
    CHECK(g != NULL);
    return g;
}

static void check_pairs(const int64_t *pairs, int64_t count, int64_t n_points, int64_t n_zones)
{
    for (int64_t k = 0; k < count; k++) {
        int64_t p = pairs[2 * k], z = pairs[2 * k + 1];
        CHECK(p >= 0 && p < n_points && z >= 0 && z < n_zones);
        if (k > 0) {
            int64_t pp = pairs[2 * k - 2], pz = pairs[2 * k - 1];
            CHECK(p > pp || (p == pp && z > pz));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    input in = {data, size, 1, data[0] & 2 ? table : NULL};
    int dims = data[0] & 1 ? 3 : 2;
    int64_t n_zones = 1 + input_byte(&in) % 24;

    offsets ring = {0}, polygon = {0}, part = {0};
    double *xy = NULL;
    int64_t n_coords = 0, cap_coords = 0;
    int tidy = 1; /* every ring closed, every coordinate on the grid */
    push(&ring, 0);
    push(&polygon, 0);
    push(&part, 0);
    for (int64_t z = 0; z < n_zones; z++) {
        int parts = input_byte(&in) % 4;
        for (int p = 0; p < parts; p++) {
            int rings = input_byte(&in) % 4;
            for (int k = 0; k < rings; k++) {
                int shape = input_byte(&in);
                int len = shape % 12, closed = (shape & 0x80) != 0;
                int64_t first = n_coords;
                for (int i = 0; i < len + (closed && len > 0); i++) {
                    if (n_coords == cap_coords) {
                        cap_coords = cap_coords ? cap_coords * 2 : 64;
                        xy = realloc(xy, (size_t)cap_coords * 2 * sizeof *xy);
                        CHECK(xy != NULL);
                    }
                    if (i == len) { /* closing position: the first again */
                        xy[2 * n_coords] = xy[2 * first];
                        xy[2 * n_coords + 1] = xy[2 * first + 1];
                    } else {
                        xy[2 * n_coords] = input_number(&in);
                        xy[2 * n_coords + 1] = input_number(&in);
                    }
                    tidy &= on_grid(xy[2 * n_coords]) && on_grid(xy[2 * n_coords + 1]);
                    n_coords++;
                }
                tidy &= len == 0 || closed;
                push(&ring, n_coords);
            }
            push(&polygon, ring.len - 1);
        }
        push(&part, polygon.len - 1);
    }
    int64_t n_points = input_items(&in, (size_t)dims);
    double *points = malloc((size_t)(n_points > 0 ? n_points : 1) * (size_t)dims * sizeof *points);
    CHECK(points != NULL);
    for (int64_t i = 0; i < n_points * dims; i++)
        points[i] = input_number(&in);

    double *coords = exact_copy(xy, (size_t)n_coords * 2 * sizeof *xy);
    int64_t *ring_offsets = exact_copy(ring.v, (size_t)ring.len * sizeof *ring.v);
    int64_t *polygon_offsets = exact_copy(polygon.v, (size_t)polygon.len * sizeof *polygon.v);
    int64_t *part_offsets = exact_copy(part.v, (size_t)part.len * sizeof *part.v);
    gw_zones *zones = gw_zones_new(geos(), coords, ring_offsets, polygon_offsets, part_offsets,
                                   n_zones);
    CHECK(zones != NULL);

    int64_t *pairs = NULL;
    int64_t count = gw_zones_locate(zones, points, n_points, dims, &pairs);
    CHECK(count >= 0);
    check_pairs(pairs, count, n_points, n_zones);
    for (int64_t k = 0; k < count; k++) {
        const double *p = points + pairs[2 * k] * dims;
        CHECK(isfinite(p[0]) && isfinite(p[1]));
    }
    if (tidy) {
        int64_t k = 0;
        for (int64_t i = 0; i < n_points; i++) {
            double x = points[i * dims], y = points[i * dims + 1];
            if (!on_grid(x) || !on_grid(y)) {
                while (k < count && pairs[2 * k] == i)
                    k++;
                continue;
            }
            for (int64_t z = 0; z < n_zones; z++) {
                if (gw_zone_locate(zones, z, x, y) == GW_OUTSIDE)
                    continue;
                CHECK(k < count && pairs[2 * k] == i && pairs[2 * k + 1] == z);
                k++;
            }
            CHECK(k == count || pairs[2 * k] > i);
        }
        CHECK(k == count);
    }
    gw_free(pairs);

    /* The zones as GEOS polygons (multi where they have several), against
     * the zones. */
    uint8_t *multi = malloc((size_t)n_zones);
    GEOSGeometry **geoms = calloc((size_t)n_zones, sizeof *geoms);
    char *errors = calloc((size_t)n_zones, 256);
    CHECK(multi != NULL && geoms != NULL && errors != NULL);
    for (int64_t z = 0; z < n_zones; z++)
        multi[z] = part_offsets[z + 1] - part_offsets[z] > 1;
    gw_build_polygons(geos(), coords, n_coords, ring_offsets, ring.len - 1, polygon_offsets,
                      polygon.len - 1, part_offsets, multi, n_zones, geoms, errors, 256);
    count = gw_zones_intersecting(zones, geoms, n_zones, &pairs);
    CHECK(count >= 0);
    check_pairs(pairs, count, n_zones, n_zones);
    gw_free(pairs);
    gw_geoms_free(geos(), geoms, n_zones);

    gw_zones_free(zones);
    free(multi);
    free(geoms);
    free(errors);
    free(coords);
    free(ring_offsets);
    free(polygon_offsets);
    free(part_offsets);
    free(points);
    free(xy);
    free(ring.v);
    free(polygon.v);
    free(part.v);
    return 0;
}
