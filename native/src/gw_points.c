/*
 * Point-array loops: voxel downsampling and bounding-box pre-filtering, which
 * return indices into the input, so that a frame's other fields follow the
 * kept points without the loops having to know about them; and the convex
 * hull of a frame, its footprint.
 */
#include "gateway.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int gw_finite(const double *p, int dims)
{
    for (int d = 0; d < dims; d++)
        if (!isfinite(p[d]))
            return 0;
    return 1;
}

int64_t gw_count_nonfinite(const double *xyz, int64_t n, int dims)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += !gw_finite(xyz + i * dims, dims);
    return bad;
}

static int64_t gw_voxel_coord(double v, double size)
{
    double cell = floor(v / size);
    /* Far-out values share the outermost cell rather than overflow. */
    if (cell > 4.0e18)
        cell = 4.0e18;
    if (cell < -4.0e18)
        cell = -4.0e18;
    return (int64_t)cell;
}

static uint64_t gw_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Keeps the first point of each occupied voxel, in input order; the grid is
 * anchored at the origin (as PCL's VoxelGrid), so that overlapping frames
 * share voxel boundaries. Returns the count kept, -1 when out of memory. */
int64_t gw_voxel_select(const double *xyz, int64_t n, int dims, double size, int64_t *out_index)
{
    if (!(size > 0.0) || !isfinite(size)) {
        int64_t kept = 0;
        for (int64_t i = 0; i < n; i++)
            if (gw_finite(xyz + i * dims, dims))
                out_index[kept++] = i;
        return kept;
    }
    uint64_t cap = 16;
    while (cap < (uint64_t)n + (uint64_t)n / 2)
        cap <<= 1;
    int64_t *keys = malloc(cap * 3 * sizeof *keys);
    uint8_t *used = calloc(cap, 1);
    if (keys == NULL || used == NULL) {
        free(keys);
        free(used);
        return -1;
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *p = xyz + i * dims;
        if (!gw_finite(p, dims))
            continue;
        int64_t k0 = gw_voxel_coord(p[0], size), k1 = gw_voxel_coord(p[1], size);
        int64_t k2 = dims > 2 ? gw_voxel_coord(p[2], size) : 0;
        uint64_t h = gw_mix((uint64_t)k0 * 0x9E3779B97F4A7C15ULL ^ gw_mix((uint64_t)k1) * 31
                            ^ gw_mix((uint64_t)k2 + 0x632BE59BD9B4E019ULL));
        uint64_t slot = h & (cap - 1);
        for (;;) {
            if (!used[slot]) {
                used[slot] = 1;
                keys[3 * slot] = k0;
                keys[3 * slot + 1] = k1;
                keys[3 * slot + 2] = k2;
                out_index[kept++] = i;
                break;
            }
            if (keys[3 * slot] == k0 && keys[3 * slot + 1] == k1 && keys[3 * slot + 2] == k2)
                break;
            slot = (slot + 1) & (cap - 1);
        }
    }
    free(keys);
    free(used);
    return kept;
}

/* bbox is (minx, miny, minz, maxx, maxy, maxz), bounds inclusive; z is
 * ignored for two-dimensional input. Non-finite points never pass. */
int64_t gw_bbox_select(const double *xyz, int64_t n, int dims, const double *bbox,
                       int64_t *out_index)
{
    int64_t kept = 0;
    int checked = dims > 2 ? 3 : 2;
    for (int64_t i = 0; i < n; i++) {
        const double *p = xyz + i * dims;
        int inside = 1;
        for (int d = 0; d < checked; d++) {
            /* Written so that NaN fails both comparisons. */
            if (!(p[d] >= bbox[d] && p[d] <= bbox[3 + d])) {
                inside = 0;
                break;
            }
        }
        if (inside)
            out_index[kept++] = i;
    }
    return kept;
}

/* ---- convex hull ---- */

typedef struct {
    double x, y;
} gw_xy;

static int gw_cmp_xy(const void *a, const void *b)
{
    const gw_xy *p = a, *q = b;
    if (p->x != q->x)
        return (p->x > q->x) - (p->x < q->x);
    return (p->y > q->y) - (p->y < q->y);
}

/* The convex hull of the finite points as a closed ring, counter-clockwise
 * (GeoJSON's right-hand rule), without collinear vertices: K + 1 positions
 * for K corners; 2 for collinear points (the two ends), 1 for a single
 * position, 0 for none. Andrew's monotone chain, after dropping the points
 * that lie strictly inside the octagon of the extreme points (Akl and
 * Toussaint), which on a LiDAR sweep is nearly all of them. Orientation as
 * GEOS decides it. Returns the positions written to out (x, y pairs), -1
 * when out of memory, -2 when out_capacity is too small. */
int64_t gw_hull(const double *xyz, int64_t n, int dims, double *out, int64_t out_capacity)
{
    /* The extremes: min x, max x, min y, max y, min and max of x + y, x - y. */
    int64_t ext[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    double best[8];
    for (int64_t i = 0; i < n; i++) {
        const double *p = xyz + i * dims;
        if (!isfinite(p[0]) || !isfinite(p[1]))
            continue;
        double key[8] = {-p[0], p[0], -p[1], p[1], -(p[0] + p[1]), p[0] + p[1],
                         -(p[0] - p[1]), p[0] - p[1]};
        for (int k = 0; k < 8; k++) {
            if (ext[k] < 0 || key[k] > best[k]) {
                ext[k] = i;
                best[k] = key[k];
            }
        }
    }
    if (ext[0] < 0)
        return 0;
    /* The octagon, counter-clockwise: min x, min(x+y), min y, max(x-y),
     * max x, max(x+y), max y, min(x-y). Repeated corners are dropped. */
    static const int order[8] = {0, 4, 2, 7, 1, 5, 3, 6};
    gw_xy oct[8];
    int m = 0;
    for (int k = 0; k < 8; k++) {
        const double *e = xyz + ext[order[k]] * dims;
        gw_xy v = {e[0], e[1]};
        if (m == 0 || v.x != oct[m - 1].x || v.y != oct[m - 1].y)
            oct[m++] = v;
    }
    while (m > 1 && oct[m - 1].x == oct[0].x && oct[m - 1].y == oct[0].y)
        m--;
    gw_xy *pts = malloc((size_t)(n > 0 ? n : 1) * sizeof *pts);
    if (pts == NULL)
        return -1;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *p = xyz + i * dims;
        if (!isfinite(p[0]) || !isfinite(p[1]))
            continue;
        int inside = m >= 3;
        for (int k = 0; k < m && inside; k++) {
            const gw_xy *a = &oct[k], *b = &oct[(k + 1) % m];
            inside = gw_orientation(a->x, a->y, b->x, b->y, p[0], p[1]) > 0;
        }
        if (!inside)
            pts[count++] = (gw_xy){p[0], p[1]};
    }
    qsort(pts, (size_t)count, sizeof *pts, gw_cmp_xy);
    int64_t unique = 0;
    for (int64_t i = 0; i < count; i++)
        if (unique == 0 || pts[i].x != pts[unique - 1].x || pts[i].y != pts[unique - 1].y)
            pts[unique++] = pts[i];
    count = unique;
    if (count <= 2) {
        int64_t k = count == 2 ? 2 : count;
        if (k > out_capacity) {
            free(pts);
            return -2;
        }
        for (int64_t i = 0; i < k; i++) {
            out[2 * i] = pts[i].x;
            out[2 * i + 1] = pts[i].y;
        }
        free(pts);
        return k;
    }
    gw_xy *hull = malloc((size_t)(2 * count + 1) * sizeof *hull);
    if (hull == NULL) {
        free(pts);
        return -1;
    }
    int64_t h = 0;
    for (int64_t i = 0; i < count; i++) { /* lower chain, left to right */
        while (h >= 2 && gw_orientation(hull[h - 2].x, hull[h - 2].y, hull[h - 1].x,
                                        hull[h - 1].y, pts[i].x, pts[i].y) <= 0)
            h--;
        hull[h++] = pts[i];
    }
    for (int64_t i = count - 2, lower = h + 1; i >= 0; i--) { /* upper chain, back */
        while (h >= lower && gw_orientation(hull[h - 2].x, hull[h - 2].y, hull[h - 1].x,
                                            hull[h - 1].y, pts[i].x, pts[i].y) <= 0)
            h--;
        hull[h++] = pts[i];
    }
    free(pts);
    /* h positions, the last equal to the first: a closed ring; or, when every
     * point lies on one line, the two ends and the first again. */
    int64_t result;
    if (h == 3) { /* collinear: the chains met at the far end */
        result = 2;
        if (result <= out_capacity) {
            out[0] = hull[0].x, out[1] = hull[0].y, out[2] = hull[1].x, out[3] = hull[1].y;
        }
    } else {
        result = h;
        if (result <= out_capacity)
            for (int64_t i = 0; i < h; i++) {
                out[2 * i] = hull[i].x;
                out[2 * i + 1] = hull[i].y;
            }
    }
    free(hull);
    return result <= out_capacity ? result : -2;
}
