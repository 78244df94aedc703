/* gatewayd's own C API (native/src/gateway.h), as cffi sees it. */
#define GW_MSG_LEN 512
#define GW_CAP_PREPARED_XY 1

typedef struct gw_geos {
    GEOSContextHandle_t handle;
    int n_errors;
    int n_notices;
    char error[512];
    char notice[512];
} gw_geos;

typedef struct gw_proj {
    PJ_CONTEXT *ctx;
    int n_errors;
    char error[512];
} gw_proj;

typedef struct gw_zones gw_zones;

int gw_abi_version(void);
int gw_capabilities(void);
const char *gw_geos_build_version(void);

gw_geos *gw_geos_new(void);
void gw_geos_free(gw_geos *g);

int64_t gw_build_polygons(gw_geos *g, const double *coords, int64_t n_coords,
                          const int64_t *ring_offsets, int64_t n_rings,
                          const int64_t *polygon_offsets, int64_t n_polygons,
                          const int64_t *part_offsets, const uint8_t *multi,
                          int64_t n_geoms, GEOSGeometry **out,
                          char *errors, size_t error_stride);
void gw_geoms_free(gw_geos *g, GEOSGeometry **geoms, int64_t n);
int64_t gw_validity(gw_geos *g, GEOSGeometry *const *geoms, int64_t n,
                    uint8_t *valid, char *reasons, size_t reason_stride);
int64_t gw_make_valid(gw_geos *g, GEOSGeometry *const *geoms, int64_t n,
                      GEOSGeometry **out);
int64_t gw_area(gw_geos *g, GEOSGeometry *const *geoms, int64_t n, double *out);
int64_t gw_geodesic_area(gw_geos *g, GEOSGeometry *const *geoms, int64_t n,
                         double a, double f, double *out);
int64_t gw_convex_hull(gw_geos *g, const double *xyz, int64_t n, int dims,
                       double *out, int64_t out_capacity);

gw_zones *gw_zones_new(gw_geos *g, const double *coords, const int64_t *ring_offsets,
                       const int64_t *polygon_offsets, const int64_t *part_offsets, int64_t n);
void gw_zones_free(gw_zones *z);
int64_t gw_zones_locate(gw_zones *z, const double *xy, int64_t n, int dims,
                        int64_t **pairs);
int64_t gw_zones_intersecting(gw_zones *z, GEOSGeometry *const *geoms, int64_t n,
                              int64_t **pairs);
void gw_free(void *p);

int64_t gw_voxel_select(const double *xyz, int64_t n, int dims, double size,
                        int64_t *out_index);
int64_t gw_bbox_select(const double *xyz, int64_t n, int dims,
                       const double *bbox, int64_t *out_index);
int64_t gw_count_nonfinite(const double *xyz, int64_t n, int dims);

gw_proj *gw_proj_new(void);
void gw_proj_free(gw_proj *p);
PJ *gw_proj_crs(gw_proj *p, const char *definition);
PJ *gw_proj_transformation(gw_proj *p, PJ *source, PJ *target);
void gw_pj_free(PJ *pj);
int gw_proj_crs_is_angular(gw_proj *p, PJ *crs);
int64_t gw_transform(gw_proj *p, PJ *pj, int direction, double *xyz, int64_t n,
                     int dims);

/* ---- NMEA framing ---- */
#define GW_NMEA_OK 0
#define GW_NMEA_BAD_CHECKSUM 1
#define GW_NMEA_TOO_LONG 2
#define GW_NMEA_TRUNCATED 3
#define GW_NMEA_NO_CHECKSUM 4
int64_t gw_nmea_scan(const uint8_t *buf, int64_t n, int64_t max_len, int final,
                     int64_t *out, int64_t capacity, int64_t *consumed, int64_t *garbage);

/* ---- NMEA fix assembly (gpsd's reporting cycle) ---- */
/* values: status lat lon altMSL altHAE geoidSep speed track climb magvar eph epx epy epv */
#define GW_FIX_FIELDS 14
#define GW_FIX_TIME_LEN 24 /* YYYY-MM-DDTHH:MM:SS.mmmZ */

typedef struct gw_fix {
    int64_t offset; /* stream offset of the cycle's first sentence */
    int32_t mode;
    uint32_t present; /* bit k: values[k] was given */
    double values[14];
    char time[24]; /* not terminated; time[0] == 0: no time */
} gw_fix;

typedef struct gw_nmea_stats {
    int64_t sentences;
    int64_t bad_checksum;
    int64_t no_checksum;
    int64_t too_long;
    int64_t truncated;
    int64_t garbage_bytes;
    int64_t skipped_proprietary;
    int64_t skipped_unknown;
    int64_t malformed;
    int64_t fixes;
} gw_nmea_stats;

/* The decoder's state; the rest of it (gpsd's session) is private to C. */
typedef struct gw_nmea {
    gw_nmea_stats stats;
    uint32_t enders; /* bit per sentence type: learned to end a cycle */
    ...;
} gw_nmea;

void gw_nmea_init(gw_nmea *st);
int64_t gw_nmea_decode(gw_nmea *st, const uint8_t *buf, int64_t n, int64_t base,
                       int64_t max_len, int final, gw_fix *out, int64_t capacity,
                       int64_t *consumed);
int64_t gw_fix_json(const gw_fix *fixes, int64_t n, char *out, int64_t cap,
                    int64_t *ends);

/* ---- gpsd TPV JSON, the plain shape (gw_tpv.c) ---- */
/* values: lat lon altMSL altHAE alt speed track climb magvar eph epx epy epv */
#define GW_TPV_NUMBERS 13

typedef struct gw_tpv {
    int32_t mode; /* 1, 2 or 3 */
    uint32_t present; /* bit k: values[k] is the document's (finite) number */
    int32_t alt_msl_named; /* the document has an "altMSL": "alt" keeps its name */
    int64_t time_start; /* the time string's bytes in the input; -1: none */
    int64_t time_len;
    double values[13];
    int64_t members_len; /* -1: Python writes the members */
    char members[320]; /* the fields but "class", as JSON members (no NUL) */
} gw_tpv;

/* 1: the document read into out; 0: one for Python's json to read. */
int gw_tpv_parse(const uint8_t *buf, int64_t n, gw_tpv *out);

/* ---- MQTT packets read in a run (gw_mqtt.c) ---- */
/* An entry: header, then for a PUBLISH topic start and end, packet id,
 * payload start and end; for a PUBACK packet id, reason code, 0, body start
 * and end; then where the packet ends. Offsets are into buf. */
#define GW_MQTT_ENTRY 7
int64_t gw_mqtt_scan(const uint8_t *buf, int64_t n, int64_t pos, int v5, int publishes,
                     int64_t *out, int64_t capacity, int64_t *end);

/* ---- LZF (PCD binary_compressed) ---- */
int64_t gw_lzf_decompress(const uint8_t *in, int64_t in_len, uint8_t *out, int64_t out_len);
