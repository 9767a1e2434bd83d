/*
 * srv_log.c - the log sink: stderr, one line per call. The level is the one
 * piece of process-wide state in the server, set once at start-up.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "server/srv_log.h"

static int log_level = SRV_LOG_INFO;

void srv_log_set_level(int level)
{
    log_level = level;
}

int srv_log_level(void)
{
    return log_level;
}

void srv_log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char stamp[32];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    if (level > log_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s ", stamp, ts.tv_nsec / 1000000L,
            names[level < 0   ? 0
                  : level > 3 ? 3
                              : level]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
