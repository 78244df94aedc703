/*
 * Point-in-zones: every point is tagged with the zones it falls in (boundary
 * included). The zones' coordinates are not copied: they are read where they
 * lie, in ragged arrays every worker maps read-only from one file (shapely's
 * to_ragged_array layout: coordinates, ring, polygon and part offsets), so a
 * zone file costs its size once, not once per worker. Only the index is the
 * worker's own: zone envelopes in a packed Sort-Tile-Recursive tree, so that
 * a query needs no allocation.
 *
 * The tests are GEOS's own algorithms, on the same arithmetic: ray crossing
 * (RayCrossingCounter) for a point, and for a geometry an edge crossing or
 * one inside the other. Orientation is decided by a floating-point filter
 * and, where it cannot tell, in double-double arithmetic, as GEOS's
 * CGAlgorithmsDD::orientationIndex does. The zones are made valid before
 * they are written (see gatewayd.processing.save_zones).
 */
#include "gateway.h"

#include <math.h>
#include <stdlib.h>

#define GW_NODE_CAPACITY 16

typedef struct {
    double minx, miny, maxx, maxy;
    int64_t start, count; /* children in the level below; a zone id at level 0 */
} gw_node;

struct gw_zones {
    gw_geos *g;
    int64_t n;
    const double *coords; /* (x, y) pairs, borrowed: the caller keeps them alive */
    const int64_t *ring_offsets, *polygon_offsets, *part_offsets;
    int levels;
    gw_node *level[64];
    int64_t level_size[64];
};

typedef struct {
    int64_t *data;
    int64_t len, cap;
} gw_vec;

static int gw_vec_push(gw_vec *v, int64_t value)
{
    if (v->len == v->cap) {
        int64_t cap = v->cap ? v->cap * 2 : 64;
        int64_t *data = realloc(v->data, (size_t)cap * sizeof *data);
        if (data == NULL)
            return 0;
        v->data = data;
        v->cap = cap;
    }
    v->data[v->len++] = value;
    return 1;
}

void gw_zones_free(gw_zones *z)
{
    if (z == NULL)
        return;
    for (int l = 0; l < z->levels; l++)
        free(z->level[l]);
    free(z);
}

/* ---- orientation, as GEOS decides it ---- */

typedef struct {
    double hi, lo;
} gw_dd;

static gw_dd gw_dd_sum(double a, double b) /* exact: hi + lo == a + b */
{
    double s = a + b, v = s - a;
    return (gw_dd){s, (a - (s - v)) + (b - v)};
}

static gw_dd gw_dd_add(gw_dd a, gw_dd b)
{
    gw_dd s = gw_dd_sum(a.hi, b.hi), t = gw_dd_sum(a.lo, b.lo);
    s.lo += t.hi;
    s = gw_dd_sum(s.hi, s.lo);
    s.lo += t.lo;
    return gw_dd_sum(s.hi, s.lo);
}

static gw_dd gw_dd_mul(gw_dd a, gw_dd b)
{
    double p = a.hi * b.hi;
    double e = fma(a.hi, b.hi, -p); /* exact product error */
    e += a.hi * b.lo + a.lo * b.hi;
    return gw_dd_sum(p, e);
}

static gw_dd gw_dd_neg(gw_dd a) { return (gw_dd){-a.hi, -a.lo}; }

/* +1 when q lies left of p1->p2, -1 right, 0 on the line. */
int gw_orientation(double p1x, double p1y, double p2x, double p2y, double qx, double qy)
{
    double dx1 = p2x - p1x, dy1 = p2y - p1y, dx2 = qx - p2x, dy2 = qy - p2y;
    double left = dx1 * dy2, right = dy1 * dx2, det = left - right;
    double bound = 1e-15 * (fabs(left) + fabs(right)); /* GEOS's filter */
    if (det > bound)
        return 1;
    if (-det > bound)
        return -1;
    gw_dd ddx1 = gw_dd_sum(p2x, -p1x), ddy1 = gw_dd_sum(p2y, -p1y);
    gw_dd ddx2 = gw_dd_sum(qx, -p2x), ddy2 = gw_dd_sum(qy, -p2y);
    gw_dd d = gw_dd_add(gw_dd_mul(ddx1, ddy2), gw_dd_neg(gw_dd_mul(ddy1, ddx2)));
    return (d.hi > 0) - (d.hi < 0);
}

/* ---- points in rings and polygons ---- */

enum { GW_OUTSIDE = 0, GW_INSIDE = 1, GW_BOUNDARY = 2 };

/* Where (x, y) lies against a closed ring of m positions (GEOS's
 * RayCrossingCounter). */
static int gw_ring_locate(const double *xy, int64_t m, double x, double y)
{
    int64_t crossings = 0;
    for (int64_t i = 1; i < m; i++) {
        double x1 = xy[2 * (i - 1)], y1 = xy[2 * (i - 1) + 1];
        double x2 = xy[2 * i], y2 = xy[2 * i + 1];
        if (x1 < x && x2 < x)
            continue;
        if (x == x2 && y == y2)
            return GW_BOUNDARY;
        if (y1 == y && y2 == y) {
            double lo = x1 < x2 ? x1 : x2, hi = x1 < x2 ? x2 : x1;
            if (x >= lo && x <= hi)
                return GW_BOUNDARY;
            continue;
        }
        if ((y1 > y && y2 <= y) || (y2 > y && y1 <= y)) {
            int o = gw_orientation(x1, y1, x2, y2, x, y);
            if (o == 0)
                return GW_BOUNDARY;
            if (y2 < y1)
                o = -o;
            if (o > 0)
                crossings++;
        }
    }
    return crossings % 2 ? GW_INSIDE : GW_OUTSIDE;
}

/* Where a point lies against one polygon: rings r0 (the shell) to r1 (its
 * holes), ring r starting at position starts[r] of xy, ending at starts[r+1]. */
static int gw_polygon_locate(const double *xy, const int64_t *starts, int64_t r0, int64_t r1,
                             double x, double y)
{
    if (r0 == r1)
        return GW_OUTSIDE;
    int where = gw_ring_locate(xy + 2 * starts[r0], starts[r0 + 1] - starts[r0], x, y);
    if (where != GW_INSIDE)
        return where;
    for (int64_t h = r0 + 1; h < r1; h++) {
        int in_hole = gw_ring_locate(xy + 2 * starts[h], starts[h + 1] - starts[h], x, y);
        if (in_hole == GW_BOUNDARY)
            return GW_BOUNDARY;
        if (in_hole == GW_INSIDE)
            return GW_OUTSIDE;
    }
    return GW_INSIDE;
}

/* Where a point lies against zone z's geometry (its polygons and holes). */
static int gw_zone_locate(const gw_zones *z, int64_t zone, double x, double y)
{
    int where = GW_OUTSIDE;
    for (int64_t p = z->part_offsets[zone]; p < z->part_offsets[zone + 1]; p++) {
        int here = gw_polygon_locate(z->coords, z->ring_offsets, z->polygon_offsets[p],
                                     z->polygon_offsets[p + 1], x, y);
        if (here == GW_BOUNDARY)
            return GW_BOUNDARY;
        if (here == GW_INSIDE)
            where = GW_INSIDE;
    }
    return where;
}

static int gw_cmp_cx(const void *a, const void *b)
{
    const gw_node *p = a, *q = b;
    double x = p->minx + p->maxx, y = q->minx + q->maxx;
    return (x > y) - (x < y);
}

static int gw_cmp_cy(const void *a, const void *b)
{
    const gw_node *p = a, *q = b;
    double x = p->miny + p->maxy, y = q->miny + q->maxy;
    return (x > y) - (x < y);
}

/* Sorts nodes into STR order: slices by x centre, each slice by y centre. */
static void gw_str_sort(gw_node *nodes, int64_t count)
{
    int64_t parents = (count + GW_NODE_CAPACITY - 1) / GW_NODE_CAPACITY;
    int64_t slices = (int64_t)ceil(sqrt((double)parents));
    int64_t per_slice = slices * GW_NODE_CAPACITY;
    qsort(nodes, (size_t)count, sizeof *nodes, gw_cmp_cx);
    for (int64_t s = 0; s < count; s += per_slice) {
        int64_t len = count - s < per_slice ? count - s : per_slice;
        qsort(nodes + s, (size_t)len, sizeof *nodes, gw_cmp_cy);
    }
}

static int gw_build_tree(gw_zones *z, gw_node *leaves, int64_t count)
{
    z->levels = 0;
    gw_str_sort(leaves, count);
    z->level[z->levels] = leaves;
    z->level_size[z->levels++] = count;
    while (count > 1 && z->levels < 64) {
        int64_t parents = (count + GW_NODE_CAPACITY - 1) / GW_NODE_CAPACITY;
        gw_node *below = z->level[z->levels - 1];
        gw_node *up = malloc((size_t)parents * sizeof *up);
        if (up == NULL)
            return 0;
        for (int64_t p = 0; p < parents; p++) {
            int64_t start = p * GW_NODE_CAPACITY;
            int64_t end = start + GW_NODE_CAPACITY < count ? start + GW_NODE_CAPACITY : count;
            up[p] = (gw_node){below[start].minx, below[start].miny, below[start].maxx,
                              below[start].maxy, start, end - start};
            for (int64_t c = start + 1; c < end; c++) {
                up[p].minx = fmin(up[p].minx, below[c].minx);
                up[p].miny = fmin(up[p].miny, below[c].miny);
                up[p].maxx = fmax(up[p].maxx, below[c].maxx);
                up[p].maxy = fmax(up[p].maxy, below[c].maxy);
            }
        }
        /* Children keep their ranges, so the parents may be reordered freely. */
        if (parents > 1)
            gw_str_sort(up, parents);
        z->level[z->levels] = up;
        z->level_size[z->levels++] = parents;
        count = parents;
    }
    return 1;
}

/* ---- building the index ---- */

/* Borrows the arrays: they must outlive the index (they are memory-mapped
 * and held by the Python object that owns it). A zone with no polygons (one
 * that could not be repaired) keeps its index but never matches. */
gw_zones *gw_zones_new(gw_geos *g, const double *coords, const int64_t *ring_offsets,
                       const int64_t *polygon_offsets, const int64_t *part_offsets, int64_t n)
{
    gw_zones *z = calloc(1, sizeof *z);
    gw_node *leaves = malloc((size_t)(n > 0 ? n : 1) * sizeof *leaves);
    if (z == NULL || leaves == NULL) {
        free(z);
        free(leaves);
        return NULL;
    }
    z->g = g;
    z->n = n;
    z->coords = coords;
    z->ring_offsets = ring_offsets;
    z->polygon_offsets = polygon_offsets;
    z->part_offsets = part_offsets;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        /* The envelope of the zone's exterior rings (holes lie inside them). */
        double minx = INFINITY, miny = INFINITY, maxx = -INFINITY, maxy = -INFINITY;
        for (int64_t p = part_offsets[i]; p < part_offsets[i + 1]; p++) {
            int64_t r = polygon_offsets[p];
            if (r == polygon_offsets[p + 1])
                continue;
            for (int64_t k = ring_offsets[r]; k < ring_offsets[r + 1]; k++) {
                double x = coords[2 * k], y = coords[2 * k + 1];
                minx = fmin(minx, x);
                miny = fmin(miny, y);
                maxx = fmax(maxx, x);
                maxy = fmax(maxy, y);
            }
        }
        if (minx <= maxx && miny <= maxy)
            leaves[count++] = (gw_node){minx, miny, maxx, maxy, i, 1};
    }
    if (!gw_build_tree(z, leaves, count)) {
        gw_zones_free(z);
        return NULL;
    }
    return z;
}

static int gw_cmp_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int gw_holds(const gw_node *node, double x, double y)
{
    return x >= node->minx && x <= node->maxx && y >= node->miny && y <= node->maxy;
}

/* 1: the point is in the zone (its boundary included); 0: it is not. */
static int gw_confirm(const gw_zones *z, int64_t zone, double x, double y)
{
    return gw_zone_locate(z, zone, x, y) != GW_OUTSIDE;
}

/* Returns the number of (point, zone) pairs written to *pairs as interleaved
 * int64 (free with gw_free), sorted by point then zone; -1 when out of memory. */
int64_t gw_zones_locate(gw_zones *z, const double *xy, int64_t n, int dims, int64_t **pairs)
{
    gw_vec out = {0}, hits = {0};
    int64_t stack_level[64 * GW_NODE_CAPACITY], stack_node[64 * GW_NODE_CAPACITY];
    *pairs = NULL;
    if (z->level_size[0] == 0) /* no zone to fall in */
        return 0;
    int top_level = z->levels - 1;
    for (int64_t i = 0; i < n; i++) {
        double x = xy[i * dims], y = xy[i * dims + 1];
        if (!isfinite(x) || !isfinite(y))
            continue;
        int sp = 0;
        hits.len = 0;
        /* Only nodes whose box holds the point are pushed; their children are
         * scanned in place, contiguous in the level below. */
        for (int64_t r = 0; r < z->level_size[top_level]; r++) {
            if (gw_holds(&z->level[top_level][r], x, y)) {
                stack_level[sp] = top_level;
                stack_node[sp++] = r;
            }
        }
        if (top_level == 0) {
            /* A single leaf level: the roots are the zones themselves. */
            for (int k = 0; k < sp; k++) {
                int64_t zone = z->level[0][stack_node[k]].start;
                if (gw_confirm(z, zone, x, y) && !gw_vec_push(&hits, zone))
                    goto fail;
            }
            sp = 0;
        }
        while (sp > 0) {
            sp--;
            int level = (int)stack_level[sp];
            const gw_node *node = &z->level[level][stack_node[sp]];
            const gw_node *child = z->level[level - 1] + node->start;
            for (int64_t c = 0; c < node->count; c++) {
                if (!gw_holds(&child[c], x, y))
                    continue;
                if (level - 1 > 0) {
                    stack_level[sp] = level - 1;
                    stack_node[sp++] = node->start + c;
                    continue;
                }
                int64_t zone = child[c].start;
                if (gw_confirm(z, zone, x, y) && !gw_vec_push(&hits, zone))
                    goto fail;
            }
        }
        if (hits.len > 1)
            qsort(hits.data, (size_t)hits.len, sizeof(int64_t), gw_cmp_int64);
        for (int64_t k = 0; k < hits.len; k++)
            if (!(gw_vec_push(&out, i) && gw_vec_push(&out, hits.data[k])))
                goto fail;
    }
    free(hits.data);
    *pairs = out.data;
    return out.len / 2;
fail:
    free(hits.data);
    free(out.data);
    return -1;
}

static int gw_boxes_overlap(const gw_node *node, double minx, double miny, double maxx,
                            double maxy)
{
    return node->minx <= maxx && minx <= node->maxx && node->miny <= maxy && miny <= node->maxy;
}

/* ---- a geometry against a zone ---- */

/* A query geometry's rings, copied out of GEOS once: positions, and for each
 * ring its start and its polygon (rings of one polygon are contiguous, the
 * exterior first). */
typedef struct {
    double *xy;
    int64_t *ring_start; /* rings + 1 entries */
    int64_t *ring_polygon;
    int64_t rings, positions;
    double minx, miny, maxx, maxy;
} gw_shape;

static void gw_shape_free(gw_shape *s)
{
    free(s->xy);
    free(s->ring_start);
    free(s->ring_polygon);
    *s = (gw_shape){0};
}

static int gw_shape_ring(gw_geos *g, gw_shape *s, const GEOSGeometry *ring, int64_t polygon,
                         int64_t *cap_rings, int64_t *cap_positions)
{
    const GEOSCoordSequence *seq = GEOSGeom_getCoordSeq_r(g->handle, ring);
    unsigned int size = 0;
    if (seq == NULL || !GEOSCoordSeq_getSize_r(g->handle, seq, &size))
        return 0;
    if (s->rings + 2 > *cap_rings) {
        int64_t cap = *cap_rings * 2 + 8;
        int64_t *a = realloc(s->ring_start, (size_t)cap * sizeof *a);
        if (a == NULL)
            return 0;
        s->ring_start = a;
        int64_t *b = realloc(s->ring_polygon, (size_t)cap * sizeof *b);
        if (b == NULL)
            return 0;
        s->ring_polygon = b;
        *cap_rings = cap;
    }
    if (s->positions + size > *cap_positions) {
        int64_t cap = (*cap_positions + size) * 2;
        double *xy = realloc(s->xy, (size_t)cap * 2 * sizeof *xy);
        if (xy == NULL)
            return 0;
        s->xy = xy;
        *cap_positions = cap;
    }
    if (size && !GEOSCoordSeq_copyToBuffer_r(g->handle, seq, s->xy + 2 * s->positions, 0, 0))
        return 0;
    s->ring_start[s->rings] = s->positions;
    s->ring_polygon[s->rings] = polygon;
    s->rings++;
    s->positions += size;
    s->ring_start[s->rings] = s->positions;
    return 1;
}

/* 0 when out of memory (or the geometry cannot be read). */
static int gw_shape_of(gw_geos *g, const GEOSGeometry *geom, gw_shape *s)
{
    int64_t cap_rings = 0, cap_positions = 0;
    *s = (gw_shape){0};
    int parts = GEOSGeomTypeId_r(g->handle, geom) == GEOS_POLYGON
                    ? 1 : GEOSGetNumGeometries_r(g->handle, geom);
    for (int k = 0; k < parts; k++) {
        const GEOSGeometry *poly =
            GEOSGeomTypeId_r(g->handle, geom) == GEOS_POLYGON ? geom
                                                              : GEOSGetGeometryN_r(g->handle, geom, k);
        if (poly == NULL || GEOSGeomTypeId_r(g->handle, poly) != GEOS_POLYGON ||
            GEOSisEmpty_r(g->handle, poly))
            continue;
        if (!gw_shape_ring(g, s, GEOSGetExteriorRing_r(g->handle, poly), k, &cap_rings,
                           &cap_positions))
            goto fail;
        int holes = GEOSGetNumInteriorRings_r(g->handle, poly);
        for (int h = 0; h < holes; h++)
            if (!gw_shape_ring(g, s, GEOSGetInteriorRingN_r(g->handle, poly, h), k, &cap_rings,
                               &cap_positions))
                goto fail;
    }
    s->minx = s->miny = INFINITY;
    s->maxx = s->maxy = -INFINITY;
    for (int64_t i = 0; i < s->positions; i++) {
        s->minx = fmin(s->minx, s->xy[2 * i]);
        s->miny = fmin(s->miny, s->xy[2 * i + 1]);
        s->maxx = fmax(s->maxx, s->xy[2 * i]);
        s->maxy = fmax(s->maxy, s->xy[2 * i + 1]);
    }
    return 1;
fail:
    gw_shape_free(s);
    return 0;
}

/* Where a point lies against a query shape's polygons and holes. */
static int gw_shape_locate(const gw_shape *s, double x, double y)
{
    int where = GW_OUTSIDE;
    for (int64_t r = 0; r < s->rings;) {
        int64_t end = r + 1;
        while (end < s->rings && s->ring_polygon[end] == s->ring_polygon[r])
            end++;
        int here = gw_polygon_locate(s->xy, s->ring_start, r, end, x, y);
        if (here == GW_BOUNDARY)
            return GW_BOUNDARY;
        if (here == GW_INSIDE)
            where = GW_INSIDE;
        r = end;
    }
    return where;
}

static int gw_on_segment(double ax, double ay, double bx, double by, double px, double py)
{
    return fmin(ax, bx) <= px && px <= fmax(ax, bx) && fmin(ay, by) <= py && py <= fmax(ay, by);
}

/* Whether segments ab and cd share a point (touching included). */
static int gw_segments_meet(const double *a, const double *b, const double *c, const double *d)
{
    if (fmax(a[0], b[0]) < fmin(c[0], d[0]) || fmax(c[0], d[0]) < fmin(a[0], b[0]) ||
        fmax(a[1], b[1]) < fmin(c[1], d[1]) || fmax(c[1], d[1]) < fmin(a[1], b[1]))
        return 0;
    int o1 = gw_orientation(a[0], a[1], b[0], b[1], c[0], c[1]);
    int o2 = gw_orientation(a[0], a[1], b[0], b[1], d[0], d[1]);
    int o3 = gw_orientation(c[0], c[1], d[0], d[1], a[0], a[1]);
    int o4 = gw_orientation(c[0], c[1], d[0], d[1], b[0], b[1]);
    if (o1 * o2 < 0 && o3 * o4 < 0)
        return 1;
    return (o1 == 0 && gw_on_segment(a[0], a[1], b[0], b[1], c[0], c[1])) ||
           (o2 == 0 && gw_on_segment(a[0], a[1], b[0], b[1], d[0], d[1])) ||
           (o3 == 0 && gw_on_segment(c[0], c[1], d[0], d[1], a[0], a[1])) ||
           (o4 == 0 && gw_on_segment(c[0], c[1], d[0], d[1], b[0], b[1]));
}

/* Whether the query shape and zone z share a point: an edge of one meets an
 * edge of the other, or one lies inside the other. */
static int gw_shape_meets_zone(const gw_zones *z, int64_t zone, const gw_shape *s)
{
    const int64_t *rings = z->ring_offsets;
    int64_t first = -1;
    for (int64_t p = z->part_offsets[zone]; p < z->part_offsets[zone + 1]; p++) {
        for (int64_t r = z->polygon_offsets[p]; r < z->polygon_offsets[p + 1]; r++) {
            const double *zr = z->coords + 2 * rings[r];
            int64_t m = rings[r + 1] - rings[r];
            if (m && first < 0)
                first = rings[r];
            for (int64_t i = 1; i < m; i++) {
                const double *a = zr + 2 * (i - 1), *b = zr + 2 * i;
                if (fmax(a[0], b[0]) < s->minx || fmin(a[0], b[0]) > s->maxx ||
                    fmax(a[1], b[1]) < s->miny || fmin(a[1], b[1]) > s->maxy)
                    continue;
                for (int64_t q = 0; q < s->rings; q++) {
                    for (int64_t k = s->ring_start[q] + 1; k < s->ring_start[q + 1]; k++)
                        if (gw_segments_meet(a, b, s->xy + 2 * (k - 1), s->xy + 2 * k))
                            return 1;
                }
            }
        }
    }
    if (first < 0 || s->positions == 0)
        return 0;
    /* No edges meet: either one holds the other whole, or they are apart. */
    if (gw_zone_locate(z, zone, s->xy[0], s->xy[1]) != GW_OUTSIDE)
        return 1;
    return gw_shape_locate(s, z->coords[2 * first], z->coords[2 * first + 1]) != GW_OUTSIDE;
}

/* Like gw_zones_locate, for geometries: (geometry, zone) pairs for every zone
 * a geometry intersects. NULL or empty geometries are in no zone. */
int64_t gw_zones_intersecting(gw_zones *z, GEOSGeometry *const *geoms, int64_t n,
                              int64_t **pairs)
{
    GEOSContextHandle_t h = z->g->handle;
    gw_vec out = {0}, hits = {0};
    int64_t stack_level[64 * GW_NODE_CAPACITY], stack_node[64 * GW_NODE_CAPACITY];
    *pairs = NULL;
    if (z->level_size[0] == 0)
        return 0;
    int top_level = z->levels - 1;
    for (int64_t i = 0; i < n; i++) {
        if (geoms[i] == NULL || GEOSisEmpty_r(h, geoms[i]))
            continue;
        gw_shape shape;
        if (!gw_shape_of(z->g, geoms[i], &shape))
            goto fail;
        if (shape.positions == 0) {
            gw_shape_free(&shape);
            continue;
        }
        int sp = 0;
        hits.len = 0;
        for (int64_t r = 0; r < z->level_size[top_level]; r++) {
            stack_level[sp] = top_level;
            stack_node[sp++] = r;
        }
        while (sp > 0) {
            sp--;
            int level = (int)stack_level[sp];
            const gw_node *node = &z->level[level][stack_node[sp]];
            if (!gw_boxes_overlap(node, shape.minx, shape.miny, shape.maxx, shape.maxy))
                continue;
            if (level == 0) {
                int64_t zone = node->start;
                if (gw_shape_meets_zone(z, zone, &shape) && !gw_vec_push(&hits, zone)) {
                    gw_shape_free(&shape);
                    goto fail;
                }
                continue;
            }
            for (int64_t c = 0; c < node->count && sp < 64 * GW_NODE_CAPACITY; c++) {
                stack_level[sp] = level - 1;
                stack_node[sp++] = node->start + c;
            }
        }
        gw_shape_free(&shape);
        if (hits.len > 1)
            qsort(hits.data, (size_t)hits.len, sizeof(int64_t), gw_cmp_int64);
        for (int64_t k = 0; k < hits.len; k++)
            if (!(gw_vec_push(&out, i) && gw_vec_push(&out, hits.data[k])))
                goto fail;
    }
    free(hits.data);
    *pairs = out.data;
    return out.len / 2;
fail:
    free(hits.data);
    free(out.data);
    return -1;
}
