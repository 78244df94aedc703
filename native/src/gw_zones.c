/*
 * Point-in-zones: every point is tagged with the zones it falls in (boundary
 * included). Zone envelopes go into a packed Sort-Tile-Recursive tree built
 * here, so that a query needs no allocation; a candidate whose envelope holds
 * the point is confirmed by its prepared GEOS geometry (the XY predicate on
 * GEOS 3.12+, a point geometry made only when a candidate exists before).
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
    GEOSGeometry **geoms;
    const GEOSPreparedGeometry **prepared;
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
    for (int64_t i = 0; i < z->n; i++) {
        if (z->prepared[i] != NULL)
            GEOSPreparedGeom_destroy_r(z->g->handle, z->prepared[i]);
        if (z->geoms[i] != NULL)
            GEOSGeom_destroy_r(z->g->handle, z->geoms[i]);
    }
    free(z->prepared);
    free(z->geoms);
    free(z);
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

/* Takes ownership of geoms[0..n); NULL or empty entries (zones that could
 * not be built) keep their index but never match. */
gw_zones *gw_zones_new(gw_geos *g, GEOSGeometry **geoms, int64_t n)
{
    gw_zones *z = calloc(1, sizeof *z);
    gw_node *leaves = malloc((size_t)(n > 0 ? n : 1) * sizeof *leaves);
    if (z != NULL) {
        z->g = g;
        z->n = n;
        z->geoms = calloc((size_t)(n > 0 ? n : 1), sizeof *z->geoms);
        z->prepared = calloc((size_t)(n > 0 ? n : 1), sizeof *z->prepared);
    }
    if (z == NULL || leaves == NULL || z->geoms == NULL || z->prepared == NULL) {
        for (int64_t i = 0; i < n; i++)
            if (geoms[i] != NULL)
                GEOSGeom_destroy_r(g->handle, geoms[i]);
        free(leaves);
        if (z != NULL)
            z->n = 0;
        gw_zones_free(z);
        return NULL;
    }
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        z->geoms[i] = geoms[i];
        geoms[i] = NULL;
        double minx, miny, maxx, maxy;
        if (z->geoms[i] == NULL || GEOSisEmpty_r(g->handle, z->geoms[i]) ||
            !GEOSGeom_getXMin_r(g->handle, z->geoms[i], &minx) ||
            !GEOSGeom_getYMin_r(g->handle, z->geoms[i], &miny) ||
            !GEOSGeom_getXMax_r(g->handle, z->geoms[i], &maxx) ||
            !GEOSGeom_getYMax_r(g->handle, z->geoms[i], &maxy))
            continue;
        z->prepared[i] = GEOSPrepare_r(g->handle, z->geoms[i]);
        if (z->prepared[i] != NULL)
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

/* 1: the point is in the zone; 0: it is not; 2: out of memory. */
static char gw_confirm(gw_zones *z, int64_t zone, double x, double y, GEOSGeometry **point)
{
#if GEOS_VERSION_MAJOR > 3 || (GEOS_VERSION_MAJOR == 3 && GEOS_VERSION_MINOR >= 12)
    (void)point;
    return GEOSPreparedIntersectsXY_r(z->g->handle, z->prepared[zone], x, y) == 1;
#else
    if (*point == NULL && (*point = GEOSGeom_createPointFromXY_r(z->g->handle, x, y)) == NULL)
        return 2;
    return GEOSPreparedIntersects_r(z->g->handle, z->prepared[zone], *point) == 1;
#endif
}

/* Returns the number of (point, zone) pairs written to *pairs as interleaved
 * int64 (free with gw_free), sorted by point then zone; -1 when out of memory. */
int64_t gw_zones_locate(gw_zones *z, const double *xy, int64_t n, int dims, int64_t **pairs)
{
    GEOSContextHandle_t h = z->g->handle;
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
        GEOSGeometry *point = NULL;
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
                char hit = gw_confirm(z, zone, x, y, &point);
                if (hit == 2 || (hit == 1 && !gw_vec_push(&hits, zone)))
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
                char hit = gw_confirm(z, zone, x, y, &point);
                if (hit == 2 || (hit == 1 && !gw_vec_push(&hits, zone)))
                    goto fail;
            }
        }
        if (point != NULL)
            GEOSGeom_destroy_r(h, point);
        point = NULL;
        if (hits.len > 1)
            qsort(hits.data, (size_t)hits.len, sizeof(int64_t), gw_cmp_int64);
        for (int64_t k = 0; k < hits.len; k++)
            if (!(gw_vec_push(&out, i) && gw_vec_push(&out, hits.data[k])))
                goto fail;
        continue;
    fail:
        if (point != NULL)
            GEOSGeom_destroy_r(h, point);
        free(hits.data);
        free(out.data);
        return -1;
    }
    free(hits.data);
    *pairs = out.data;
    return out.len / 2;
}

static int gw_boxes_overlap(const gw_node *node, double minx, double miny, double maxx,
                            double maxy)
{
    return node->minx <= maxx && minx <= node->maxx && node->miny <= maxy && miny <= node->maxy;
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
        double minx, miny, maxx, maxy;
        if (geoms[i] == NULL || GEOSisEmpty_r(h, geoms[i]) ||
            !GEOSGeom_getXMin_r(h, geoms[i], &minx) || !GEOSGeom_getYMin_r(h, geoms[i], &miny) ||
            !GEOSGeom_getXMax_r(h, geoms[i], &maxx) || !GEOSGeom_getYMax_r(h, geoms[i], &maxy))
            continue;
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
            if (!gw_boxes_overlap(node, minx, miny, maxx, maxy))
                continue;
            if (level == 0) {
                int64_t zone = node->start;
                if (GEOSPreparedIntersects_r(h, z->prepared[zone], geoms[i]) == 1 &&
                    !gw_vec_push(&hits, zone))
                    goto fail;
                continue;
            }
            for (int64_t c = 0; c < node->count && sp < 64 * GW_NODE_CAPACITY; c++) {
                stack_level[sp] = level - 1;
                stack_node[sp++] = node->start + c;
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
