/*
 * Point-in-zones: every point is tagged with the zones it falls in (boundary
 * included). Zones are prepared once and indexed in a GEOS STRtree; a query
 * point's candidates come from the tree and are confirmed by the prepared
 * predicate, the XY variant where GEOS has it (3.12+).
 */
#include "gateway.h"

#include <math.h>
#include <stdlib.h>

struct gw_zones {
    gw_geos *g;
    int64_t n;
    GEOSGeometry **geoms;
    const GEOSPreparedGeometry **prepared;
    int64_t *items; /* items[i] == i: the tree stores pointers to these */
    GEOSSTRtree *tree;
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

static void gw_collect_candidate(void *item, void *userdata)
{
    gw_vec_push((gw_vec *)userdata, *(const int64_t *)item);
}

void gw_zones_free(gw_zones *z)
{
    if (z == NULL)
        return;
    if (z->tree != NULL)
        GEOSSTRtree_destroy_r(z->g->handle, z->tree);
    for (int64_t i = 0; i < z->n; i++) {
        if (z->prepared[i] != NULL)
            GEOSPreparedGeom_destroy_r(z->g->handle, z->prepared[i]);
        if (z->geoms[i] != NULL)
            GEOSGeom_destroy_r(z->g->handle, z->geoms[i]);
    }
    free(z->prepared);
    free(z->geoms);
    free(z->items);
    free(z);
}

/* Takes ownership of geoms[0..n); NULL entries (zones that could not be
 * built) keep their index but never match. */
gw_zones *gw_zones_new(gw_geos *g, GEOSGeometry **geoms, int64_t n)
{
    gw_zones *z = calloc(1, sizeof *z);
    if (z == NULL)
        return NULL;
    z->g = g;
    z->n = n;
    z->geoms = calloc((size_t)(n > 0 ? n : 1), sizeof *z->geoms);
    z->prepared = calloc((size_t)(n > 0 ? n : 1), sizeof *z->prepared);
    z->items = malloc((size_t)(n > 0 ? n : 1) * sizeof *z->items);
    z->tree = GEOSSTRtree_create_r(g->handle, 10);
    if (z->geoms == NULL || z->prepared == NULL || z->items == NULL || z->tree == NULL) {
        for (int64_t i = 0; i < n; i++)
            if (geoms[i] != NULL)
                GEOSGeom_destroy_r(g->handle, geoms[i]);
        gw_zones_free(z);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        z->items[i] = i;
        z->geoms[i] = geoms[i];
        geoms[i] = NULL;
        if (z->geoms[i] == NULL || GEOSisEmpty_r(g->handle, z->geoms[i]))
            continue;
        z->prepared[i] = GEOSPrepare_r(g->handle, z->geoms[i]);
        if (z->prepared[i] != NULL)
            GEOSSTRtree_insert_r(g->handle, z->tree, z->geoms[i], &z->items[i]);
    }
#if GEOS_VERSION_MAJOR > 3 || (GEOS_VERSION_MAJOR == 3 && GEOS_VERSION_MINOR >= 12)
    GEOSSTRtree_build_r(g->handle, z->tree);
#endif
    return z;
}

static int gw_cmp_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Returns the number of (point, zone) pairs written to *pairs as interleaved
 * int64 (free with gw_free), sorted by point then zone; -1 when out of memory. */
int64_t gw_zones_locate(gw_zones *z, const double *xy, int64_t n, int dims, int64_t **pairs)
{
    GEOSContextHandle_t h = z->g->handle;
    gw_vec out = {0}, candidates = {0};
    *pairs = NULL;
    for (int64_t i = 0; i < n; i++) {
        double x = xy[i * dims], y = xy[i * dims + 1];
        if (!isfinite(x) || !isfinite(y))
            continue;
        GEOSGeometry *point = GEOSGeom_createPointFromXY_r(h, x, y);
        if (point == NULL)
            goto fail;
        candidates.len = 0;
        GEOSSTRtree_query_r(h, z->tree, point, gw_collect_candidate, &candidates);
        if (candidates.len > 1)
            qsort(candidates.data, (size_t)candidates.len, sizeof(int64_t), gw_cmp_int64);
        for (int64_t c = 0; c < candidates.len; c++) {
            int64_t zone = candidates.data[c];
#if GEOS_VERSION_MAJOR > 3 || (GEOS_VERSION_MAJOR == 3 && GEOS_VERSION_MINOR >= 12)
            char hit = GEOSPreparedIntersectsXY_r(h, z->prepared[zone], x, y);
#else
            char hit = GEOSPreparedIntersects_r(h, z->prepared[zone], point);
#endif
            if (hit == 1 && !(gw_vec_push(&out, i) && gw_vec_push(&out, zone))) {
                GEOSGeom_destroy_r(h, point);
                goto fail;
            }
        }
        GEOSGeom_destroy_r(h, point);
    }
    free(candidates.data);
    *pairs = out.data;
    return out.len / 2;
fail:
    free(candidates.data);
    free(out.data);
    return -1;
}
