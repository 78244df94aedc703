/*
 * GEOS side of the native core: one context per process, polygon batches
 * built from flat ragged arrays, validity with GEOS's reason text, repair,
 * planar and geodesic area, and convex hulls of point sets.
 */
#include "gateway.h"

#include <geodesic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GW_GEOS_AT_LEAST(maj, min) \
    (GEOS_VERSION_MAJOR > (maj) || (GEOS_VERSION_MAJOR == (maj) && GEOS_VERSION_MINOR >= (min)))

int gw_abi_version(void) { return GW_ABI_VERSION; }

int gw_capabilities(void)
{
    int caps = 0;
#if GW_GEOS_AT_LEAST(3, 12)
    caps |= GW_CAP_PREPARED_XY;
#endif
    return caps;
}

const char *gw_geos_build_version(void) { return GEOS_CAPI_VERSION; }

static void gw_on_geos_error(const char *message, void *userdata)
{
    gw_geos *g = (gw_geos *)userdata;
    g->n_errors++;
    snprintf(g->error, GW_MSG_LEN, "%s", message);
}

static void gw_on_geos_notice(const char *message, void *userdata)
{
    gw_geos *g = (gw_geos *)userdata;
    g->n_notices++;
    snprintf(g->notice, GW_MSG_LEN, "%s", message);
}

gw_geos *gw_geos_new(void)
{
    gw_geos *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->handle = GEOS_init_r();
    if (g->handle == NULL) {
        free(g);
        return NULL;
    }
    GEOSContext_setErrorMessageHandler_r(g->handle, gw_on_geos_error, g);
    GEOSContext_setNoticeMessageHandler_r(g->handle, gw_on_geos_notice, g);
    return g;
}

void gw_geos_free(gw_geos *g)
{
    if (g == NULL)
        return;
    GEOS_finish_r(g->handle);
    free(g);
}

static void gw_set_error(char *errors, size_t stride, int64_t i, const char *text)
{
    if (errors != NULL && stride > 0)
        snprintf(errors + (size_t)i * stride, stride, "%s", text);
}

/* A ring whose last position differs from its first is closed here, as
 * shapely does, so that a receiver's unclosed ring is judged on its shape. */
static GEOSGeometry *gw_build_ring(gw_geos *g, const double *xy, int64_t n)
{
    GEOSCoordSequence *seq;
    if (n > 0 && (xy[0] != xy[2 * (n - 1)] || xy[1] != xy[2 * (n - 1) + 1])) {
        double *closed = malloc((size_t)(n + 1) * 2 * sizeof(double));
        if (closed == NULL)
            return NULL;
        memcpy(closed, xy, (size_t)n * 2 * sizeof(double));
        closed[2 * n] = xy[0];
        closed[2 * n + 1] = xy[1];
        seq = GEOSCoordSeq_copyFromBuffer_r(g->handle, closed, (unsigned)(n + 1), 0, 0);
        free(closed);
    } else {
        seq = GEOSCoordSeq_copyFromBuffer_r(g->handle, xy, (unsigned)n, 0, 0);
    }
    if (seq == NULL)
        return NULL;
    return GEOSGeom_createLinearRing_r(g->handle, seq);
}

static GEOSGeometry *gw_build_polygon(gw_geos *g, const double *coords,
                                      const int64_t *ring_offsets,
                                      int64_t first_ring, int64_t end_ring)
{
    int64_t n_rings = end_ring - first_ring;
    if (n_rings <= 0)
        return GEOSGeom_createEmptyPolygon_r(g->handle);

    GEOSGeometry **rings = calloc((size_t)n_rings, sizeof *rings);
    if (rings == NULL)
        return NULL;
    int64_t r;
    for (r = 0; r < n_rings; r++) {
        int64_t start = ring_offsets[first_ring + r];
        int64_t count = ring_offsets[first_ring + r + 1] - start;
        rings[r] = gw_build_ring(g, coords + 2 * start, count);
        if (rings[r] == NULL)
            break;
    }
    GEOSGeometry *polygon = NULL;
    if (r == n_rings)
        polygon = GEOSGeom_createPolygon_r(g->handle, rings[0], rings + 1,
                                           (unsigned)(n_rings - 1));
    else
        for (int64_t k = 0; k < r; k++)
            GEOSGeom_destroy_r(g->handle, rings[k]);
    free(rings);
    return polygon;
}

int64_t gw_build_polygons(gw_geos *g, const double *coords, int64_t n_coords,
                          const int64_t *ring_offsets, int64_t n_rings,
                          const int64_t *polygon_offsets, int64_t n_polygons,
                          const int64_t *part_offsets, const uint8_t *multi,
                          int64_t n_geoms, GEOSGeometry **out,
                          char *errors, size_t error_stride)
{
    int64_t failed = 0;
    (void)n_coords;
    (void)n_rings;
    (void)n_polygons;
    for (int64_t i = 0; i < n_geoms; i++) {
        int64_t first = part_offsets[i], end = part_offsets[i + 1];
        int64_t n_parts = end - first;
        GEOSGeometry *geom = NULL;
        g->error[0] = '\0';

        if (!multi[i]) {
            if (n_parts == 0)
                geom = GEOSGeom_createEmptyPolygon_r(g->handle);
            else
                geom = gw_build_polygon(g, coords, ring_offsets, polygon_offsets[first],
                                        polygon_offsets[first + 1]);
        } else {
            GEOSGeometry **parts = calloc((size_t)(n_parts > 0 ? n_parts : 1), sizeof *parts);
            int64_t p = 0;
            if (parts != NULL) {
                for (; p < n_parts; p++) {
                    parts[p] = gw_build_polygon(g, coords, ring_offsets,
                                                polygon_offsets[first + p],
                                                polygon_offsets[first + p + 1]);
                    if (parts[p] == NULL)
                        break;
                }
                if (p == n_parts)
                    geom = GEOSGeom_createCollection_r(g->handle, GEOS_MULTIPOLYGON, parts,
                                                       (unsigned)n_parts);
                else
                    for (int64_t k = 0; k < p; k++)
                        GEOSGeom_destroy_r(g->handle, parts[k]);
                free(parts);
            }
        }
        out[i] = geom;
        if (geom == NULL) {
            failed++;
            gw_set_error(errors, error_stride, i,
                         g->error[0] ? g->error : "could not build geometry (out of memory)");
        }
    }
    return failed;
}

void gw_geoms_free(gw_geos *g, GEOSGeometry **geoms, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (geoms[i] != NULL) {
            GEOSGeom_destroy_r(g->handle, geoms[i]);
            geoms[i] = NULL;
        }
    }
}

/* ---- a fast certificate for simple shells ----
 *
 * Most polygons a gateway sees are one simple ring. Proving that such a ring
 * is simple costs far less than GEOS's full IsValidOp, so it is tried first.
 * It only ever answers "certainly valid" or "ask GEOS": every doubtful case
 * (a touching or crossing pair, collinear neighbours, repeated positions, a
 * determinant too close to zero to trust) goes to GEOS, whose verdict and
 * reason text stay the reference.
 */
#define GW_FAST_MAX_VERTICES 256

/* Sign of the orientation of (a, b, c): +1, -1, or 0 when the floating-point
 * determinant cannot be trusted (Shewchuk's static error bound). */
static int gw_orient(const double *a, const double *b, const double *c)
{
    double left = (a[0] - c[0]) * (b[1] - c[1]);
    double right = (a[1] - c[1]) * (b[0] - c[0]);
    double det = left - right;
    double bound = 3.3306690738754716e-16 * (fabs(left) + fabs(right));
    if (det > bound)
        return 1;
    if (-det > bound)
        return -1;
    return 0;
}

typedef struct {
    double minx, maxx, miny, maxy;
    int64_t i;
} gw_segbox;

static int gw_cmp_minx(const void *a, const void *b)
{
    double x = ((const gw_segbox *)a)->minx, y = ((const gw_segbox *)b)->minx;
    return (x > y) - (x < y);
}

/* 0: the segments i and j are certainly disjoint; 1: they cross or touch, or
 * the arithmetic cannot tell. */
static int gw_segments_may_meet(const double *xy, int64_t i, int64_t j)
{
    const double *a = xy + 2 * i, *b = xy + 2 * (i + 1);
    const double *c = xy + 2 * j, *d = xy + 2 * (j + 1);
    int o1 = gw_orient(a, b, c), o2 = gw_orient(a, b, d);
    if (o1 != 0 && o1 == o2)
        return 0;
    int o3 = gw_orient(c, d, a), o4 = gw_orient(c, d, b);
    if (o3 != 0 && o3 == o4)
        return 0;
    return 1;
}

static int gw_ring_certainly_simple(const double *xy, int64_t n)
{
    int64_t m = n - 1; /* segments; xy[n-1] == xy[0] */
    gw_segbox boxes[GW_FAST_MAX_VERTICES];
    if (n < 4 || n > GW_FAST_MAX_VERTICES)
        return 0;
    if (xy[0] != xy[2 * m] || xy[1] != xy[2 * m + 1])
        return 0;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(xy[2 * i]) || !isfinite(xy[2 * i + 1]))
            return 0;
    for (int64_t i = 0; i < m; i++) {
        const double *a = xy + 2 * i, *b = xy + 2 * (i + 1);
        if (gw_orient(a, b, xy + 2 * ((i + 2) % m)) == 0)
            return 0; /* repeated point, spike or straight run */
        boxes[i].minx = a[0] < b[0] ? a[0] : b[0];
        boxes[i].maxx = a[0] < b[0] ? b[0] : a[0];
        boxes[i].miny = a[1] < b[1] ? a[1] : b[1];
        boxes[i].maxy = a[1] < b[1] ? b[1] : a[1];
        boxes[i].i = i;
    }
    /* Sweep along x: only segments whose x-extents overlap are compared. */
    qsort(boxes, (size_t)m, sizeof boxes[0], gw_cmp_minx);
    for (int64_t p = 0; p < m; p++) {
        for (int64_t q = p + 1; q < m && boxes[q].minx <= boxes[p].maxx; q++) {
            if (boxes[q].maxy < boxes[p].miny || boxes[p].maxy < boxes[q].miny)
                continue;
            int64_t i = boxes[p].i, j = boxes[q].i;
            int64_t gap = i > j ? i - j : j - i;
            if (gap == 1 || gap == m - 1)
                continue; /* neighbours share a vertex, checked above */
            if (gw_segments_may_meet(xy, i, j))
                return 0;
        }
    }
    return 1;
}

/* A Polygon with one finite closed shell and no holes, simple for certain. */
static int gw_certainly_valid(gw_geos *g, const GEOSGeometry *geom)
{
    if (GEOSGeomTypeId_r(g->handle, geom) != GEOS_POLYGON ||
        GEOSGetNumInteriorRings_r(g->handle, geom) != 0 || GEOSisEmpty_r(g->handle, geom))
        return 0;
    const GEOSCoordSequence *seq =
        GEOSGeom_getCoordSeq_r(g->handle, GEOSGetExteriorRing_r(g->handle, geom));
    unsigned int size = 0;
    if (seq == NULL || !GEOSCoordSeq_getSize_r(g->handle, seq, &size) ||
        size > GW_FAST_MAX_VERTICES)
        return 0;
    double xy[2 * GW_FAST_MAX_VERTICES];
    if (!GEOSCoordSeq_copyToBuffer_r(g->handle, seq, xy, 0, 0))
        return 0;
    return gw_ring_certainly_simple(xy, size);
}

int64_t gw_validity(gw_geos *g, GEOSGeometry *const *geoms, int64_t n,
                    uint8_t *valid, char *reasons, size_t reason_stride)
{
    int64_t invalid = 0;
    for (int64_t i = 0; i < n; i++) {
        valid[i] = 0;
        if (geoms[i] == NULL) {
            /* The builder already wrote why it could not be built. */
            invalid++;
            continue;
        }
        if (gw_certainly_valid(g, geoms[i])) {
            valid[i] = 1;
            gw_set_error(reasons, reason_stride, i, "");
            continue;
        }
        g->error[0] = '\0';
        char *reason = GEOSisValidReason_r(g->handle, geoms[i]);
        if (reason == NULL) {
            gw_set_error(reasons, reason_stride, i, g->error[0] ? g->error : "validity check failed");
            invalid++;
            continue;
        }
        if (strcmp(reason, "Valid Geometry") == 0) {
            valid[i] = 1;
            gw_set_error(reasons, reason_stride, i, "");
        } else {
            gw_set_error(reasons, reason_stride, i, reason);
            invalid++;
        }
        GEOSFree_r(g->handle, reason);
    }
    return invalid;
}

/* The "structure" method with collapsed parts dropped keeps a polygon a
 * polygon: a repaired sensor footprint must not turn into loose lines. */
int64_t gw_make_valid(gw_geos *g, GEOSGeometry *const *geoms, int64_t n, GEOSGeometry **out)
{
    int64_t failed = 0;
    GEOSMakeValidParams *params = GEOSMakeValidParams_create_r(g->handle);
    if (params == NULL)
        return -1;
    GEOSMakeValidParams_setMethod_r(g->handle, params, GEOS_MAKE_VALID_STRUCTURE);
    GEOSMakeValidParams_setKeepCollapsed_r(g->handle, params, 0);
    for (int64_t i = 0; i < n; i++) {
        out[i] = NULL;
        if (geoms[i] == NULL) {
            failed++;
            continue;
        }
        out[i] = GEOSMakeValidWithParams_r(g->handle, geoms[i], params);
        if (out[i] == NULL)
            failed++;
    }
    GEOSMakeValidParams_destroy_r(g->handle, params);
    return failed;
}

int64_t gw_area(gw_geos *g, GEOSGeometry *const *geoms, int64_t n, double *out)
{
    int64_t failed = 0;
    for (int64_t i = 0; i < n; i++) {
        out[i] = NAN;
        if (geoms[i] == NULL || !GEOSArea_r(g->handle, geoms[i], &out[i])) {
            out[i] = NAN;
            failed++;
        }
    }
    return failed;
}

static int gw_ring_geodesic_area(gw_geos *g, const struct geod_geodesic *geod,
                                 const GEOSGeometry *ring, double *area)
{
    const GEOSCoordSequence *seq = GEOSGeom_getCoordSeq_r(g->handle, ring);
    unsigned int size = 0;
    if (seq == NULL || !GEOSCoordSeq_getSize_r(g->handle, seq, &size))
        return 0;
    *area = 0.0;
    if (size < 4)
        return 1;
    double *lonlat = malloc((size_t)size * 2 * sizeof(double));
    if (lonlat == NULL)
        return 0;
    GEOSCoordSeq_copyToBuffer_r(g->handle, seq, lonlat, 0, 0);
    /* geod_polygonarea wants separate arrays, latitudes first. */
    double *lats = malloc((size_t)size * sizeof(double));
    double *lons = malloc((size_t)size * sizeof(double));
    int ok = lats != NULL && lons != NULL;
    if (ok) {
        for (unsigned int k = 0; k < size; k++) {
            lons[k] = lonlat[2 * k];
            lats[k] = lonlat[2 * k + 1];
        }
        double perimeter;
        /* The closing position repeats the first; the algorithm closes itself. */
        geod_polygonarea(geod, lats, lons, (int)size - 1, area, &perimeter);
        *area = fabs(*area);
    }
    free(lats);
    free(lons);
    free(lonlat);
    return ok;
}

static int gw_geodesic_area_of(gw_geos *g, const struct geod_geodesic *geod,
                               const GEOSGeometry *geom, double *area)
{
    int type = GEOSGeomTypeId_r(g->handle, geom);
    *area = 0.0;
    if (type == GEOS_POLYGON) {
        if (GEOSisEmpty_r(g->handle, geom))
            return 1;
        double part;
        if (!gw_ring_geodesic_area(g, geod, GEOSGetExteriorRing_r(g->handle, geom), &part))
            return 0;
        *area = part;
        int holes = GEOSGetNumInteriorRings_r(g->handle, geom);
        for (int h = 0; h < holes; h++) {
            if (!gw_ring_geodesic_area(g, geod, GEOSGetInteriorRingN_r(g->handle, geom, h), &part))
                return 0;
            *area -= part;
        }
        return 1;
    }
    if (type == GEOS_MULTIPOLYGON || type == GEOS_GEOMETRYCOLLECTION) {
        int parts = GEOSGetNumGeometries_r(g->handle, geom);
        for (int k = 0; k < parts; k++) {
            double part;
            if (!gw_geodesic_area_of(g, geod, GEOSGetGeometryN_r(g->handle, geom, k), &part))
                return 0;
            *area += part;
        }
        return 1;
    }
    return 1; /* points and lines enclose no area */
}

int64_t gw_geodesic_area(gw_geos *g, GEOSGeometry *const *geoms, int64_t n,
                         double a, double f, double *out)
{
    struct geod_geodesic geod;
    int64_t failed = 0;
    geod_init(&geod, a, f);
    for (int64_t i = 0; i < n; i++) {
        if (geoms[i] == NULL || !gw_geodesic_area_of(g, &geod, geoms[i], &out[i])) {
            out[i] = NAN;
            failed++;
        }
    }
    return failed;
}


/* Writes the hull's vertices (x, y) into out and returns how many: a closed
 * ring for a polygonal hull, fewer for collinear or single points, -1 on a
 * GEOS error, -2 when out is too small. Non-finite points are left out. */
int64_t gw_convex_hull(gw_geos *g, const double *xyz, int64_t n, int dims,
                       double *out, int64_t out_capacity)
{
    (void)g; /* the hull is computed in gw_points.c, faster than GEOSConvexHull */
    return gw_hull(xyz, n, dims, out, out_capacity);
}

void gw_free(void *p) { free(p); }
