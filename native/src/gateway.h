/*
 * gatewayd native core: the C side of the cffi extension gatewayd._native.
 *
 * Loops over whole batches live here so that Python crosses the FFI boundary
 * once per batch, not once per point. Message handlers are plain C functions
 * (no ffi.callback: the hardened unit forbids writable+executable memory);
 * they copy GEOS's and PROJ's messages into the context struct, and the Python
 * wrapper drains them into logging after each call.
 */
#ifndef GATEWAYD_NATIVE_H
#define GATEWAYD_NATIVE_H

#include <stdint.h>
#include <stddef.h>

#define GEOS_USE_ONLY_R_API
#include <geos_c.h>
#include <proj.h>

/* Bumped whenever the C API below changes; checked by the Python wrapper. */
#define GW_ABI_VERSION 5

#define GW_MSG_LEN 512

/* Capability flags, fixed at build time by the GEOS headers. */
#define GW_CAP_PREPARED_XY 1 /* GEOSPreparedIntersectsXY_r (GEOS >= 3.12) */

typedef struct gw_geos {
    GEOSContextHandle_t handle;
    int n_errors;
    int n_notices;
    char error[GW_MSG_LEN];
    char notice[GW_MSG_LEN];
} gw_geos;

typedef struct gw_proj {
    PJ_CONTEXT *ctx;
    int n_errors;
    char error[GW_MSG_LEN];
} gw_proj;

typedef struct gw_zones gw_zones;

int gw_abi_version(void);
int gw_capabilities(void);
const char *gw_geos_build_version(void);

/* ---- GEOS context ---- */
gw_geos *gw_geos_new(void);
void gw_geos_free(gw_geos *g);

/* ---- geometry batches ---- */
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

/* Orientation of q against p1->p2 as GEOS decides it (+1 left, -1 right, 0 on
 * the line): a filter, then double-double arithmetic. Internal. */
int gw_orientation(double p1x, double p1y, double p2x, double p2y, double qx, double qy);
int64_t gw_hull(const double *xyz, int64_t n, int dims, double *out, int64_t out_capacity);

/* ---- zones ---- */
gw_zones *gw_zones_new(gw_geos *g, const double *coords, const int64_t *ring_offsets,
                       const int64_t *polygon_offsets, const int64_t *part_offsets, int64_t n);
void gw_zones_free(gw_zones *z);
int64_t gw_zones_locate(gw_zones *z, const double *xy, int64_t n, int dims,
                        int64_t **pairs);
int64_t gw_zones_intersecting(gw_zones *z, GEOSGeometry *const *geoms, int64_t n,
                              int64_t **pairs);
void gw_free(void *p);

/* ---- points ---- */
int64_t gw_voxel_select(const double *xyz, int64_t n, int dims, double size,
                        int64_t *out_index);
int64_t gw_bbox_select(const double *xyz, int64_t n, int dims,
                       const double *bbox, int64_t *out_index);
int64_t gw_count_nonfinite(const double *xyz, int64_t n, int dims);

/* ---- PROJ ---- */
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
#define GW_NMEA_CHANNELS 140 /* gpsd's MAXCHANNELS */
#define GW_NMEA_TYPES 16     /* sentence types read: gatewayd.nmea.SENTENCE_TYPES */

typedef struct gw_fix {
    int64_t offset; /* stream offset of the cycle's first sentence */
    int32_t mode;
    uint32_t present; /* bit k: values[k] was given */
    double values[GW_FIX_FIELDS];
    char time[GW_FIX_TIME_LEN]; /* not terminated; time[0] == 0: no time */
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

/* A fix as gpsd keeps it (struct gps_fix_t, the members TPV needs); NaN: unknown. */
typedef struct gw_gps_fix {
    int64_t sec; /* time; sec <= 0: none */
    int64_t nsec;
    int32_t mode; /* 0 not seen, 1 no fix, 2 2D, 3 3D */
    int32_t status;
    double lat, lon, alt_hae, alt_msl, geoid_sep, speed, track, climb;
    double magnetic_var, magnetic_track;
    double eph, epx, epy, epv, sep, eps, epd, epc, ept;
    double vel_n, vel_e, vel_d;
} gw_gps_fix;

typedef struct gw_sat {
    int32_t prn;
    int32_t used;
    double elevation, azimuth, ss;
} gw_sat;

typedef struct gw_nmea {
    gw_nmea_stats stats;
    uint32_t enders; /* bit per sentence type: learned to end a cycle */
    int32_t line_end; /* the last block ended inside a sentence's CR/LF */
    int64_t cycle_offset; /* stream offset of the open cycle's first sentence */
    /* gpsd's session: the fix being assembled, the last two, DOPs and sky */
    gw_gps_fix fix, newdata, lastfix, oldfix;
    double pdop, hdop, vdop, xdop, ydop, tdop, gdop;
    int32_t satellites_used, satellites_visible;
    gw_sat skyview[GW_NMEA_CHANNELS];
    uint16_t sats_used[GW_NMEA_CHANNELS];
    int32_t cycle_end_reliable;
    /* gpsd's NMEA driver state */
    int32_t year, month, mday, hour, minute, second; /* struct tm: year - 1900, month 0-11 */
    int64_t subsec_nsec;
    int64_t this_frac_sec, this_frac_nsec, last_frac_sec, last_frac_nsec;
    int32_t latch_frac_time, lasttag, cycle_continue, latch_mode;
    uint8_t cycle_enders[GW_NMEA_TYPES + 1]; /* by tag: sentence type + 1 */
    char last_gga_talker, last_gsa_talker, last_gsv_talker;
    char last_gga_timestamp[16];
    int32_t seen_gsa, seen_gsv; /* bit per talker letter, as gpsd's seen_xxgsa */
    int32_t gsv_await, gsv_part;
    int32_t century;
    int32_t leap_seconds;
} gw_nmea;

void gw_nmea_init(gw_nmea *st);
int64_t gw_nmea_decode(gw_nmea *st, const uint8_t *buf, int64_t n, int64_t base,
                       int64_t max_len, int final, gw_fix *out, int64_t capacity,
                       int64_t *consumed);
int64_t gw_fix_json(const gw_fix *fixes, int64_t n, char *out, int64_t cap,
                    int64_t *ends);

/* gpsd's geoid separation and magnetic variation models (gw_geoid.c) */
double gw_geoid_separation(double lat, double lon);
double gw_magnetic_variation(double lat, double lon);

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

#endif
