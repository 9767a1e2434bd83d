/*
 * srv_log.h - one line per event on stderr, leveled, with a UTC timestamp.
 * Never pass value bytes or credentials to these functions.
 */
#ifndef SRV_LOG_H
#define SRV_LOG_H

enum srv_log_level {
    SRV_LOG_ERROR = 0,
    SRV_LOG_WARN = 1,
    SRV_LOG_INFO = 2,
    SRV_LOG_DEBUG = 3,
};

/* Messages above level are dropped. Default SRV_LOG_INFO. */
void srv_log_set_level(int level);
int srv_log_level(void);

void srv_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define srv_error(...) srv_log(SRV_LOG_ERROR, __VA_ARGS__)
#define srv_warn(...) srv_log(SRV_LOG_WARN, __VA_ARGS__)
#define srv_info(...) srv_log(SRV_LOG_INFO, __VA_ARGS__)
#define srv_debug(...) srv_log(SRV_LOG_DEBUG, __VA_ARGS__)

#endif
