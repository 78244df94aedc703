/*
 * libFuzzer target: the point-array loops (gw_points.c): voxel selection,
 * bounding-box selection, the count of non-finite points and the convex
 * hull, on any doubles (NaN, infinities, huge, subnormal).
 *
 * Input: byte 0 says how the numbers are read (bit 0: three dimensions, else
 * two; bit 1: each number a byte that picks one from a table of awkward and
 * colliding values, else eight raw bytes); then the voxel size, the six
 * numbers of the box, and the points. The loops' answers are checked
 * against plain rules: indices rising and in range, every point inside the
 * box kept and no other, at most one point per voxel and the first of each,
 * as a quadratic scan with the same grid finds them; the hull's vertices
 * are finite input points, its ring closed and counter-clockwise, with every
 * finite point on or to the left of each edge.
 */
#include "gateway.h"
#include "harness.h"

#include <float.h>
#include <math.h>

static const double table[32] = {
    0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, -2.5, 0.1, 1e-3, 7.0, 1e3,
    NAN, -NAN, INFINITY, -INFINITY, DBL_MAX, -DBL_MAX, DBL_MIN, 4.9e-324,
    4e18, -4e18, 9.3e18, -9.3e18, 1e300, -1e300, 0.75, 1.25, 100.0, -100.0, 1e-300, 5.0};

static int all_finite(const double *p, int dims)
{
    for (int d = 0; d < dims; d++)
        if (!isfinite(p[d]))
            return 0;
    return 1;
}

/* The grid as documented: anchored at the origin, far-out cells shared. */
static int64_t cell(double v, double size)
{
    double c = floor(v / size);
    if (c > 4.0e18)
        c = 4.0e18;
    if (c < -4.0e18)
        c = -4.0e18;
    return (int64_t)c;
}

static int same_voxel(const double *p, const double *q, int dims, double size)
{
    for (int d = 0; d < dims; d++)
        if (cell(p[d], size) != cell(q[d], size))
            return 0;
    return 1;
}

static void check_rising(const int64_t *index, int64_t kept, int64_t n)
{
    CHECK(kept >= 0 && kept <= n);
    for (int64_t k = 0; k < kept; k++)
        CHECK(index[k] >= 0 && index[k] < n && (k == 0 || index[k] > index[k - 1]));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int dims = data[0] & 1 ? 3 : 2;
    input in = {data, size, 1, data[0] & 2 ? table : NULL};
    double voxel = input_number(&in), bbox[6];
    for (int k = 0; k < 6; k++)
        bbox[k] = input_number(&in);
    int64_t n = input_items(&in, (size_t)dims);
    double *xyz = malloc((size_t)(n > 0 ? n : 1) * (size_t)dims * sizeof *xyz);
    int64_t *index = malloc((size_t)(n > 0 ? n : 1) * sizeof *index);
    CHECK(xyz != NULL && index != NULL);
    for (int64_t i = 0; i < n * dims; i++)
        xyz[i] = input_number(&in);

    int64_t nonfinite = 0;
    for (int64_t i = 0; i < n; i++)
        nonfinite += !all_finite(xyz + i * dims, dims);
    CHECK(gw_count_nonfinite(xyz, n, dims) == nonfinite);

    /* The box: inclusive bounds, z only in three dimensions, NaN never in. */
    int64_t kept = gw_bbox_select(xyz, n, dims, bbox, index);
    check_rising(index, kept, n);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *p = xyz + i * dims;
        int inside = 1;
        for (int d = 0; d < (dims > 2 ? 3 : 2); d++)
            inside &= p[d] >= bbox[d] && p[d] <= bbox[3 + d];
        if (inside)
            CHECK(k < kept && index[k++] == i);
    }
    CHECK(k == kept);

    /* Voxels: the first finite point of each, in order; with no usable size,
     * every finite point. */
    kept = gw_voxel_select(xyz, n, dims, voxel, index);
    CHECK(kept >= 0); /* -1 only when out of memory */
    check_rising(index, kept, n);
    int usable = voxel > 0.0 && isfinite(voxel);
    for (int64_t j = 0; j < kept; j++)
        CHECK(all_finite(xyz + index[j] * dims, dims));
    k = 0;
    for (int64_t i = 0; i < n && n <= 512; i++) { /* quadratic: small inputs only */
        const double *p = xyz + i * dims;
        if (!all_finite(p, dims))
            continue;
        int first = 1;
        for (int64_t j = 0; usable && j < i && first; j++)
            if (all_finite(xyz + j * dims, dims) && same_voxel(xyz + j * dims, p, dims, voxel))
                first = 0;
        if (first)
            CHECK(k < kept && index[k++] == i);
    }
    CHECK(n > 512 || k == kept);

    /* The hull (x and y only). */
    double *hull = malloc((size_t)(2 * n + 2) * sizeof *hull);
    CHECK(hull != NULL);
    int64_t h = gw_hull(xyz, n, dims, hull, n + 1);
    CHECK(h >= 0 && h <= n + 1);
    for (int64_t v = 0; v < h; v++) {
        int found = 0;
        for (int64_t i = 0; i < n && !found; i++)
            found = isfinite(xyz[i * dims]) && isfinite(xyz[i * dims + 1]) &&
                    xyz[i * dims] == hull[2 * v] && xyz[i * dims + 1] == hull[2 * v + 1];
        CHECK(found);
    }
    /* Orientation is exact only while its products neither overflow nor
     * underflow: with a coordinate past 1e100 or, other than 0, under 1e-80
     * (no CRS comes near: points out of their CRS's range are dropped before
     * any hull) only memory safety and the vertices are checked. */
    int moderate = 1;
    for (int64_t i = 0; i < n * dims; i++) {
        double a = fabs(xyz[i]);
        moderate &= !isfinite(a) || a == 0.0 || (a >= 1e-80 && a <= 1e100);
    }
    if (h >= 4 && moderate) {
        CHECK(hull[0] == hull[2 * (h - 1)] && hull[1] == hull[2 * (h - 1) + 1]);
        for (int64_t e = 0; e + 1 < h && n <= 512; e++)
            for (int64_t i = 0; i < n; i++) {
                const double *p = xyz + i * dims;
                if (isfinite(p[0]) && isfinite(p[1]))
                    CHECK(gw_orientation(hull[2 * e], hull[2 * e + 1], hull[2 * e + 2],
                                         hull[2 * e + 3], p[0], p[1]) >= 0);
            }
    }
    free(hull);

    free(xyz);
    free(index);
    return 0;
}
