/*
 * srv_dashboard.h - the dashboard's static files, compiled into kvbusd.
 *
 * The table is generated at build time by server/dashboard/gen_assets.py
 * from index.html, dashboard.css and dashboard.js (into
 * $(BUILD)/gen/dashboard_assets.c), so the binary serves the page with no
 * files on disk and nothing fetched from elsewhere. The bytes are static
 * and read-only: nobody frees them.
 */
#ifndef SRV_DASHBOARD_H
#define SRV_DASHBOARD_H

#include <stddef.h>

typedef struct srv_asset {
    const char *name;         /* file name, e.g. "dashboard.js" */
    const char *content_type; /* sent as Content-Type */
    const unsigned char *data;
    size_t len; /* bytes in data */
} srv_asset;

extern const srv_asset srv_dashboard_assets[];
extern const size_t srv_dashboard_nassets;

#endif
