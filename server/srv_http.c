/*
 * srv_http.c - request parsing and dispatch for kvbusd's HTTP/1.1 server.
 * See srv_http.h for the contract, srv_http_int.h for how the server's
 * files divide the work.
 *
 * A connection reads into a fixed buffer and feeds http_parser. The parser
 * callbacks gather the target, the few headers handlers use, and the body,
 * enforcing the limits as bytes arrive. On message-complete the route table
 * picks a handler. While a handler's answer is pending the parser is paused
 * and reading stops; the unparsed bytes wait in `pending` and are parsed
 * when the answer has been written into the output buffer.
 *
 * Runs on: the event loop thread.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>
#include <uv.h>

#include "server/srv_http_int.h"

static const char *const wanted_headers[SRV_HDR__COUNT] = {
#define SRV__HDR_NAME(id, name) name,
    SRV_HDR_MAP(SRV__HDR_NAME)
#undef SRV__HDR_NAME
};

/* ------------------------------------------------------------------ */
/* Accessors for handlers                                               */

void *srv_conn_app(const srv_conn *c)
{
    return c->srv->app;
}
unsigned srv_req_method(const srv_conn *c)
{
    return c->method;
}
kv_bytes srv_req_query(const srv_conn *c)
{
    return c->query;
}

kv_bytes srv_req_cap(const srv_conn *c, int i)
{
    return (i >= 0 && i < SRV_ROUTE_CAPS) ? c->caps[i] : (kv_bytes){"", 0};
}

kv_bytes srv_req_body(const srv_conn *c)
{
    return (kv_bytes){c->body.data ? c->body.data : "", c->body.len};
}

const char *srv_req_header(const srv_conn *c, enum srv_hdr h)
{
    return c->hdr_seen[h] ? c->hdr[h] : NULL;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                              */

/* Refuses the request being parsed: answered once the parser stops. */
static int reject(srv_conn *c, int status, const char *code, const char *msg)
{
    if (!c->reject_status) {
        c->reject_status = status;
        c->reject_code = code;
        c->reject_msg = msg;
    }
    return -1; /* stops http_parser_execute */
}

static void request_reset(srv_conn *c)
{
    c->target.len = 0;
    c->body.len = 0;
    c->header_bytes = 0;
    c->field_len = 0;
    c->cur_hdr = -1;
    c->in_value = false;
    memset(c->hdr_len, 0, sizeof c->hdr_len);
    memset(c->hdr_seen, 0, sizeof c->hdr_seen);
    c->responded = false;
    c->method = 0;
    c->reject_status = 0;
}

static int on_message_begin(http_parser *p)
{
    srv_conn *c = p->data;

    request_reset(c);
    if (c->phase != SRV_PH_HEADERS)
        srv__conn_set_phase(c, SRV_PH_HEADERS);
    c->got_bytes = true;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;

    if (c->target.len + len > c->srv->limits.max_uri_bytes)
        return reject(c, 414, "uri_too_long",
                      "the request target is longer than max_uri_bytes");
    if (!srv__buf_append(&c->target, at, len))
        return reject(c, 503, "no_memory", "out of memory");
    return 0;
}

static int count_header_bytes(srv_conn *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > c->srv->limits.max_header_bytes)
        return reject(c, 431, "headers_too_large",
                      "request headers are larger than max_header_bytes");
    return 0;
}

/* Resolves the field name gathered so far to a wanted header or none. */
static void header_name_done(srv_conn *c)
{
    size_t i;

    c->cur_hdr = -1;
    c->field[c->field_len] = '\0';
    for (i = 0; i < SRV_HDR__COUNT; i++)
        if (strcasecmp(c->field, wanted_headers[i]) == 0)
            c->cur_hdr = (int)i;
    if (c->cur_hdr >= 0) {
        /* a repeated header: keep the last, as most servers do */
        c->hdr_len[c->cur_hdr] = 0;
        c->hdr_seen[c->cur_hdr] = true;
        c->hdr[c->cur_hdr][0] = '\0';
    }
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;

    if (count_header_bytes(c, len))
        return -1;
    if (c->in_value) {
        c->in_value = false;
        c->field_len = 0;
    }
    if (c->field_len + len <= SRV_HDR_NAME_MAX) {
        memcpy(c->field + c->field_len, at, len);
        c->field_len += len;
    } else {
        c->field_len = SRV_HDR_NAME_MAX + 1; /* too long to be wanted */
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;
    size_t *n;

    if (count_header_bytes(c, len))
        return -1;
    if (!c->in_value) {
        c->in_value = true;
        if (c->field_len <= SRV_HDR_NAME_MAX)
            header_name_done(c);
        else
            c->cur_hdr = -1;
    }
    if (c->cur_hdr < 0)
        return 0;
    n = &c->hdr_len[c->cur_hdr];
    if (*n + len > SRV_HDR_VALUE_MAX)
        return reject(c, 431, "header_too_large",
                      "a request header value is too long");
    memcpy(c->hdr[c->cur_hdr] + *n, at, len);
    *n += len;
    c->hdr[c->cur_hdr][*n] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    srv_conn *c = p->data;
    const char *expect = srv_req_header(c, SRV_HDR_EXPECT);
    uint64_t limit = c->srv->limits.max_body_bytes;

    if ((p->flags & F_CONTENTLENGTH) && p->content_length > limit)
        return reject(c, 413, "too_large",
                      "the request body is larger than max_value_bytes");
    if (expect && strcasecmp(expect, "100-continue") == 0)
        srv__buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    srv__conn_set_phase(c, SRV_PH_BODY);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;

    if (c->body.len + len > c->srv->limits.max_body_bytes)
        return reject(c, 413, "too_large",
                      "the request body is larger than max_value_bytes");
    if (!srv__buf_append(&c->body, at, len))
        return reject(c, 503, "no_memory", "out of memory");
    c->deadline = uv_now(c->srv->loop) + c->srv->limits.body_timeout_ms;
    return 0;
}

/* 405 with the Allow header RFC 9110 asks for. */
static void respond_not_allowed(srv_conn *c)
{
    static const struct {
        unsigned bit;
        const char *name;
    } methods[] = {{SRV_GET, "GET"},
                   {SRV_HEAD, "HEAD"},
                   {SRV_PUT, "PUT"},
                   {SRV_POST, "POST"},
                   {SRV_DELETE, "DELETE"}};
    unsigned allowed =
        srv_route_allowed(c->srv->routes, c->srv->nroutes, c->path);
    char headers[96] = "Allow: ";
    size_t i, n = strlen(headers);

    for (i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (allowed & methods[i].bit)
            n += (size_t)snprintf(headers + n, sizeof headers - n, "%s%s",
                                  n > 7 ? ", " : "", methods[i].name);
    snprintf(headers + n, sizeof headers - n, "\r\n");
    srv_respond_error_with(c, 405, headers, "method_not_allowed",
                           "this method is not allowed on this path");
}

/* A complete request: route it and run its handler. */
static int on_message_complete(http_parser *p)
{
    srv_conn *c = p->data;
    srv_server *s = c->srv;
    const srv_route *route = NULL;
    kv_bytes target = {c->target.data, c->target.len};

    c->method = srv_method_bit(p->method);
    if (!http_should_keep_alive(p))
        c->close_after_write = true;
    srv__conn_set_phase(c, SRV_PH_BUSY);
    memset(c->caps, 0, sizeof c->caps);
    if (!srv_split_target(target, &c->path, &c->query)) {
        srv_respond_error(c, 400, "bad_request",
                          "the request target must start with '/'");
    } else {
        switch (srv_route_find(s->routes, s->nroutes, c->method, c->path,
                               &route, c->caps)) {
        case SRV_MATCH_OK:
            if (!s->guard || s->guard(c, route))
                route->handler(c);
            break;
        case SRV_MATCH_BAD_METHOD:
            respond_not_allowed(c);
            break;
        case SRV_MATCH_NO_ROUTE:
            srv_respond_error(c, 404, "not_found", "no such route");
            break;
        }
    }
    if (!c->responded)
        c->waiting = true;
    /* Stop after a pending answer, and after the last request of the
     * connection: what follows a "close" is never handled (RFC 9112 9.6). */
    if (c->waiting || c->close_after_write)
        http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/*
 * Parses len bytes. Stops early when a handler's answer is pending (the
 * rest waits in c->pending) or the request is refused (answered, then the
 * connection closes, since what follows in the stream cannot be trusted).
 */
void srv__conn_feed(srv_conn *c, const char *data, size_t len)
{
    size_t used = http_parser_execute(&c->parser, &parser_settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);

    if (e == HPE_PAUSED) {
        /* the pending bytes are fed when the answer comes, unless the
         * connection ends with it; reading goes on for the linger */
        if (!c->close_after_write && used < len &&
            !srv__buf_append(&c->pending, data + used, len - used))
            c->close_after_write = true;
        http_parser_pause(&c->parser, 0);
        if (c->waiting && c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
        }
        return;
    }
    if (e == HPE_OK && c->parser.upgrade) {
        /* The handler took the connection over, or refused the upgrade. */
        if (c->proto && used < len)
            c->proto->on_data(c->proto_ud, data + used, len - used);
        else if (!c->proto)
            c->close_after_write = true;
        return;
    }
    if (e == HPE_OK)
        return;
    c->srv->stats.requests_rejected++;
    c->close_after_write = true;
    c->responded = false;
    srv__conn_set_phase(c, SRV_PH_CLOSING);
    if (c->reject_status)
        srv_respond_error(c, c->reject_status, c->reject_code, "%s",
                          c->reject_msg);
    else if (e == HPE_HEADER_OVERFLOW)
        srv_respond_error(c, 431, "headers_too_large",
                          "request headers are too large");
    else
        srv_respond_error(c, 400, "bad_request", "malformed HTTP request: %s",
                          http_errno_description(e));
}
