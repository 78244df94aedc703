/*
 * Point-array loops: voxel downsampling and bounding-box pre-filtering. Both
 * return indices into the input, so that a frame's other fields follow the
 * kept points without the loops having to know about them.
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
