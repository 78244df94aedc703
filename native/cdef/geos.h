/* The slice of geos_c.h (reentrant API only) that Python touches directly;
 * the batch loops call the rest from C. */
typedef struct GEOSContextHandle_HS *GEOSContextHandle_t;
typedef struct GEOSGeom_t GEOSGeometry;
typedef struct GEOSGeoJSONWriter_t GEOSGeoJSONWriter;

const char *GEOSversion(void);
int GEOSGeomTypeId_r(GEOSContextHandle_t handle, const GEOSGeometry *g);
char GEOSisEmpty_r(GEOSContextHandle_t handle, const GEOSGeometry *g);
GEOSGeoJSONWriter *GEOSGeoJSONWriter_create_r(GEOSContextHandle_t handle);
void GEOSGeoJSONWriter_destroy_r(GEOSContextHandle_t handle, GEOSGeoJSONWriter *writer);
char *GEOSGeoJSONWriter_writeGeometry_r(GEOSContextHandle_t handle, GEOSGeoJSONWriter *writer,
                                        const GEOSGeometry *g, int indent);
void GEOSFree_r(GEOSContextHandle_t handle, void *buffer);
