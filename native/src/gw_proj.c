/*
 * PROJ side of the native core: one context per process with network access
 * off, CRS parsing with PROJ's own message kept, lon/lat-ordered
 * transformations, and batch transforms in place where a point PROJ cannot
 * transform comes back as NaN (never HUGE_VAL) and is counted.
 */
#include "gateway.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void gw_on_proj_log(void *app_data, int level, const char *message)
{
    gw_proj *p = (gw_proj *)app_data;
    if (level > PJ_LOG_ERROR)
        return;
    p->n_errors++;
    snprintf(p->error, GW_MSG_LEN, "%s", message);
}

gw_proj *gw_proj_new(void)
{
    gw_proj *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->ctx = proj_context_create();
    if (p->ctx == NULL) {
        free(p);
        return NULL;
    }
    proj_log_func(p->ctx, p, gw_on_proj_log);
    proj_log_level(p->ctx, PJ_LOG_ERROR);
    proj_context_set_enable_network(p->ctx, 0);
    return p;
}

void gw_proj_free(gw_proj *p)
{
    if (p == NULL)
        return;
    proj_context_destroy(p->ctx);
    free(p);
}

static void gw_proj_note_errno(gw_proj *p, const char *fallback)
{
    if (p->error[0] != '\0')
        return;
    int err = proj_context_errno(p->ctx);
    const char *text = err ? proj_context_errno_string(p->ctx, err) : NULL;
    snprintf(p->error, GW_MSG_LEN, "%s", text ? text : fallback);
}

PJ *gw_proj_crs(gw_proj *p, const char *definition)
{
    p->error[0] = '\0';
    PJ *crs = proj_create(p->ctx, definition);
    if (crs != NULL && !proj_is_crs(crs)) {
        proj_destroy(crs);
        crs = NULL;
        /* "+proj=utm +zone=32" names a projection; as pyproj does, read it
         * as the CRS built on it. */
        if (definition[0] == '+' && strstr(definition, "type=crs") == NULL) {
            size_t len = strlen(definition) + sizeof " +type=crs";
            char *as_crs = malloc(len);
            if (as_crs != NULL) {
                snprintf(as_crs, len, "%s +type=crs", definition);
                crs = proj_create(p->ctx, as_crs);
                free(as_crs);
                if (crs != NULL && !proj_is_crs(crs)) {
                    proj_destroy(crs);
                    crs = NULL;
                }
            }
        }
        if (crs == NULL && p->error[0] == '\0')
            snprintf(p->error, GW_MSG_LEN, "not a coordinate reference system");
    }
    if (crs == NULL)
        gw_proj_note_errno(p, "unknown CRS");
    return crs;
}

PJ *gw_proj_transformation(gw_proj *p, PJ *source, PJ *target)
{
    p->error[0] = '\0';
    PJ *op = proj_create_crs_to_crs_from_pj(p->ctx, source, target, NULL, NULL);
    if (op == NULL) {
        gw_proj_note_errno(p, "no transformation between these CRSs");
        return NULL;
    }
    /* Axis order as pyproj's always_xy: longitude/easting first. */
    PJ *normalized = proj_normalize_for_visualization(p->ctx, op);
    proj_destroy(op);
    if (normalized == NULL)
        gw_proj_note_errno(p, "cannot normalize axis order");
    return normalized;
}

/* 1 when the CRS's axes are angular (a geographic CRS, or a compound one
 * built on it), 0 when they are linear, -1 when PROJ cannot say. */
int gw_proj_crs_is_angular(gw_proj *p, PJ *crs)
{
    PJ *horizontal = NULL;
    if (proj_get_type(crs) == PJ_TYPE_COMPOUND_CRS)
        crs = horizontal = proj_crs_get_sub_crs(p->ctx, crs, 0);
    if (crs == NULL)
        return -1;
    PJ *cs = proj_crs_get_coordinate_system(p->ctx, crs);
    int result = -1;
    if (cs != NULL) {
        result = proj_cs_get_type(p->ctx, cs) == PJ_CS_TYPE_ELLIPSOIDAL;
        proj_destroy(cs);
    }
    if (horizontal != NULL)
        proj_destroy(horizontal);
    return result;
}

void gw_pj_free(PJ *pj)
{
    if (pj != NULL)
        proj_destroy(pj);
}

/* Transforms n points of dims (2 or 3) interleaved doubles in place. Returns
 * how many points failed (now NaN in every ordinate). */
int64_t gw_transform(gw_proj *p, PJ *pj, int direction, double *xyz, int64_t n, int dims)
{
    size_t stride = (size_t)dims * sizeof(double);
    (void)p;
    if (n <= 0)
        return 0;
    /* PROJ resets the operation's errno itself on every point. */
    proj_trans_generic(pj, direction == 1 ? PJ_FWD : PJ_INV,
                       xyz, stride, (size_t)n,
                       xyz + 1, stride, (size_t)n,
                       dims > 2 ? xyz + 2 : NULL, dims > 2 ? stride : 0, dims > 2 ? (size_t)n : 0,
                       NULL, 0, 0);
    /* x * 0 is 0 for every finite x and NaN for inf or NaN: one vectorisable
     * pass proves the usual case, all points transformed, cheaply. */
    double probe = 0.0;
    for (int64_t k = 0; k < n * dims; k++)
        probe += xyz[k] * 0.0;
    if (probe == 0.0)
        return 0;
    int64_t failed = 0;
    for (int64_t i = 0; i < n; i++) {
        double *q = xyz + i * dims;
        int bad = 0;
        for (int d = 0; d < dims; d++)
            bad |= !isfinite(q[d]);
        if (bad) {
            for (int d = 0; d < dims; d++)
                q[d] = NAN;
            failed++;
        }
    }
    return failed;
}
