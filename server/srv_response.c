/*
 * srv_response.c - the growable byte buffers of kvbusd's HTTP server and
 * the writing of responses into a connection's output buffer: status line,
 * headers, body, and the JSON error bodies. srv_respond() also resumes a
 * connection whose answer came late, from a backend callback. See
 * srv_http.h for the contract.
 *
 * Runs on: the event loop thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "server/srv_http_int.h"
#include "server/srv_log.h"

#define SRV_RETRY_AFTER_S 1

/* ------------------------------------------------------------------ */
/* Buffers                                                              */

/* Makes room for len more bytes; returns false when memory runs out. */
bool srv__buf_reserve(srv_buf *b, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *grown;
        while (cap < b->len + len)
            cap *= 2;
        grown = realloc(b->data, cap);
        if (!grown)
            return false;
        b->data = grown;
        b->cap = cap;
    }
    return true;
}

/* Appends len bytes; returns false when memory runs out. */
bool srv__buf_append(srv_buf *b, const void *data, size_t len)
{
    if (!srv__buf_reserve(b, len))
        return false;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    return true;
}

static bool buf_printf(srv_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static bool buf_printf(srv_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < sizeof tmp &&
           srv__buf_append(b, tmp, (size_t)n);
}

void srv__buf_free(srv_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Responses                                                            */

static const char *status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 426:
        return "Upgrade Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

void srv_respond(srv_conn *c, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len)
{
    srv_buf *o = &c->out;
    bool ok;

    if (c->responded)
        return;
    c->responded = true;
    c->srv->stats.responses[status / 100 % 6]++;
    if (c->closing) { /* the client left; nothing to write to */
        c->waiting = false;
        srv__conn_freeable(c);
        return;
    }
    if (c->srv->draining)
        c->close_after_write = true;
    srv__conn_set_phase(c, c->close_after_write ? SRV_PH_CLOSING : SRV_PH_IDLE);
    ok = buf_printf(o, "HTTP/1.1 %d %s\r\n", status, status_text(status));
    if (content_type)
        ok = ok && buf_printf(o, "Content-Type: %s\r\n", content_type);
    if (status != 204 && status >= 200)
        ok = ok && buf_printf(o, "Content-Length: %zu\r\n", len);
    if (extra_headers)
        ok = ok && srv__buf_append(o, extra_headers, strlen(extra_headers));
    if (c->close_after_write)
        ok = ok && srv__buf_append(o, "Connection: close\r\n", 19);
    ok = ok && srv__buf_append(o, "\r\n", 2);
    if (status != 204 && c->method != SRV_HEAD)
        ok = ok && srv__buf_append(o, body, len);
    if (!ok) {
        srv_warn("http: out of memory writing a response; closing");
        c->close_after_write = true;
    }
    if (c->waiting) {
        /* Answered later, from a callback: write now and go on parsing. */
        c->waiting = false;
        srv__conn_flush(c);
        if (!c->closing && !c->close_after_write && c->pending.len) {
            srv_buf rest = c->pending;
            c->pending = (srv_buf){0};
            srv__conn_feed(c, rest.data, rest.len);
            srv__buf_free(&rest);
        }
        if (!c->closing && !c->waiting && !c->reading &&
            !c->close_after_write) {
            c->reading =
                uv_read_start((uv_stream_t *)&c->tcp, srv__conn_on_alloc,
                              srv__conn_on_read) == 0;
            if (!c->reading)
                srv__conn_close(c);
        }
        srv__conn_flush(c);
    }
}

/* The JSON error body and its headers (Retry-After on 503). */
static void respond_error_va(srv_conn *c, int status, const char *headers,
                             const char *code, const char *fmt, va_list ap)
{
    char msg[KV_ERR_MSG_BYTES];
    json_t *j;
    char *body;

    vsnprintf(msg, sizeof msg, fmt, ap);
    j = json_pack("{s:s, s:s}", "error", code, "message", msg);
    body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (!headers && status == 503)
        headers = "Retry-After: 1\r\n";
    if (body) {
        srv_respond(c, status, "application/json", headers, body, strlen(body));
    } else {
        static const char fallback[] =
            "{\"error\":\"internal\",\"message\":\"out of memory\"}";
        srv_respond(c, 503, "application/json", "Retry-After: 1\r\n", fallback,
                    sizeof fallback - 1);
    }
    free(body);
    json_decref(j);
}

void srv_respond_error(srv_conn *c, int status, const char *code,
                       const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    respond_error_va(c, status, NULL, code, fmt, ap);
    va_end(ap);
}

void srv_respond_error_with(srv_conn *c, int status, const char *headers,
                            const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    respond_error_va(c, status, headers, code, fmt, ap);
    va_end(ap);
}

void srv_respond_kv_error(srv_conn *c, int code, const kv_err *err)
{
    const char *msg = err && err->code ? err->msg : kv_strerror(code);

    srv_respond_error(c, kv_errstatus(code), kv_errcode(code), "%s", msg);
}
