/* The slice of proj.h that Python touches directly: version information and
 * the raw batch call the benchmarks measure the binding against. */
typedef struct PJconsts PJ;
typedef struct pj_ctx PJ_CONTEXT;

typedef enum { PJ_FWD = 1, PJ_IDENT = 0, PJ_INV = -1 } PJ_DIRECTION;

typedef struct {
    int major;
    int minor;
    int patch;
    const char *release;
    const char *version;
    const char *searchpath;
    const char * const *paths;
    size_t path_count;
} PJ_INFO;

PJ_INFO proj_info(void);
size_t proj_trans_generic(PJ *P, PJ_DIRECTION direction,
                          double *x, size_t sx, size_t nx,
                          double *y, size_t sy, size_t ny,
                          double *z, size_t sz, size_t nz,
                          double *t, size_t st, size_t nt);
const char *proj_as_wkt(PJ_CONTEXT *ctx, const PJ *obj, int type, const char *const *options);
const char *proj_get_name(const PJ *obj);
