/*
 * pg_sql.c - the pure helpers of the postgres backend (see pg_int.h):
 * identifier quoting and naming, LIKE escaping, value placement, binary
 * parameters, SQLSTATE mapping and the server label.
 * No state, no I/O; safe on any thread. The SQL statements themselves are
 * in pg_kv.c, the connections in pg_conn.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <xxhash.h>

#include "backends/postgres/pg_int.h"

#define PG_DEFAULT_TABLE_PREFIX "kv_"
#define PG_INDEX_SUFFIX "_ttl_idx"
#define PG_ARRAY_HEADER_BYTES 20 /* ndim, flags, elemtype, dim, lbound */
#define PG_ARRAY_ELEM_HEADER 4   /* int32 length before each element */

pg_place pg_classify(kv_bytes value, int64_t *num)
{
    int64_t n;

    if (kv_parse_int64(value, &n) == 0) {
        if (num)
            *num = n;
        return PG_PLACE_LONG;
    }
    if (value.len == 0)
        return PG_PLACE_STRING;
    if (memchr(value.ptr, '\0', value.len) == NULL &&
        kv_utf8_valid(value.ptr, value.len))
        return PG_PLACE_STRING;
    return PG_PLACE_BYTES;
}

size_t pg_quote_ident(const char *name, char *out, size_t cap)
{
    size_t n = 2, i;

    for (i = 0; name[i]; i++)
        n += name[i] == '"' ? 2 : 1;
    if (n + 1 > cap)
        return n;
    *out++ = '"';
    for (i = 0; name[i]; i++) {
        if (name[i] == '"')
            *out++ = '"';
        *out++ = name[i];
    }
    *out++ = '"';
    *out = '\0';
    return n;
}

/* Length of the longest prefix of s[0..len) that is at most max bytes and
 * does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
        max--;
    return max;
}

/*
 * name when it fits in PG_IDENT_MAX bytes, else its first bytes, '_' and
 * the XXH3-64 of the whole name in hex: PG_IDENT_MAX bytes in all.
 */
static void fit_ident(const char *name, char out[PG_IDENT_MAX + 1])
{
    size_t len = strlen(name), keep;

    if (len <= PG_IDENT_MAX) {
        memcpy(out, name, len + 1);
        return;
    }
    keep = utf8_cut(name, len, PG_IDENT_MAX - 1 - PG_HASH_HEX);
    memcpy(out, name, keep);
    snprintf(out + keep, PG_IDENT_MAX + 1 - keep, "_%016llx",
             (unsigned long long)XXH3_64bits(name, len));
}

int pg_table_name(const char *store, const char *table,
                  char out[PG_IDENT_MAX + 1], kv_err *err)
{
    char full[sizeof PG_DEFAULT_TABLE_PREFIX + KV_STORE_NAME_MAX];

    if (table) {
        size_t len = strlen(table);
        if (len == 0)
            return kv_err_set(err, KV_EINVAL, "store %s: table is empty",
                              store);
        if (len > PG_IDENT_MAX)
            return kv_err_set(err, KV_EINVAL,
                              "store %s: table name is %zu bytes; PostgreSQL "
                              "allows at most %d",
                              store, len, PG_IDENT_MAX);
        memcpy(out, table, len + 1);
        return 0;
    }
    snprintf(full, sizeof full, "%s%s", PG_DEFAULT_TABLE_PREFIX, store);
    fit_ident(full, out);
    return 0;
}

void pg_index_name(const char *table, char out[PG_IDENT_MAX + 1])
{
    char full[PG_IDENT_MAX + sizeof PG_INDEX_SUFFIX];

    snprintf(full, sizeof full, "%s%s", table, PG_INDEX_SUFFIX);
    fit_ident(full, out);
}

size_t pg_like_prefix(kv_bytes prefix, char *out)
{
    size_t n = 0, i;

    for (i = 0; i < prefix.len; i++) {
        char c = prefix.ptr[i];
        if (c == '\\' || c == '%' || c == '_')
            out[n++] = '\\';
        out[n++] = c;
    }
    out[n++] = '%';
    out[n] = '\0';
    return n;
}

int pg_sqlstate_code(const char *sqlstate)
{
    if (!sqlstate || strlen(sqlstate) != 5)
        return KV_EUNAVAIL;
    if (strcmp(sqlstate, "22003") == 0)
        return KV_EOVERFLOW;
    if (strcmp(sqlstate, "22001") == 0 || strcmp(sqlstate, "22021") == 0 ||
        strcmp(sqlstate, "22P05") == 0)
        return KV_EINVAL;
    return KV_EUNAVAIL;
}

bool pg_sqlstate_setup_race(const char *sqlstate)
{
    return sqlstate && strlen(sqlstate) == 5 &&
           (strncmp(sqlstate, "23", 2) == 0 || strcmp(sqlstate, "42P07") == 0);
}

void pg_put_be64(char out[8], int64_t v)
{
    uint64_t u = (uint64_t)v;
    int i;

    for (i = 7; i >= 0; i--) {
        out[i] = (char)(u & 0xFF);
        u >>= 8;
    }
}

int64_t pg_get_be64(const char *in)
{
    uint64_t u = 0;
    int i;

    for (i = 0; i < 8; i++)
        u = (u << 8) | (unsigned char)in[i];
    return (int64_t)u;
}

static void put_be32(char *out, uint32_t v)
{
    out[0] = (char)(v >> 24);
    out[1] = (char)(v >> 16);
    out[2] = (char)(v >> 8);
    out[3] = (char)v;
}

size_t pg_text_array_size(const kv_bytes *keys, size_t n)
{
    size_t size = PG_ARRAY_HEADER_BYTES, i;

    for (i = 0; i < n; i++)
        size += PG_ARRAY_ELEM_HEADER + keys[i].len;
    return size;
}

size_t pg_text_array_encode(const kv_bytes *keys, size_t n, char *out)
{
    char *p = out;
    size_t i;

    put_be32(p, n ? 1 : 0); /* ndim: an empty array has none */
    put_be32(p + 4, 0);     /* no NULL elements */
    put_be32(p + 8, PG_OID_TEXT);
    put_be32(p + 12, (uint32_t)n);
    put_be32(p + 16, 1); /* lower bound */
    p += n ? PG_ARRAY_HEADER_BYTES : 12;
    for (i = 0; i < n; i++) {
        put_be32(p, (uint32_t)keys[i].len);
        if (keys[i].len)
            memcpy(p + PG_ARRAY_ELEM_HEADER, keys[i].ptr, keys[i].len);
        p += PG_ARRAY_ELEM_HEADER + keys[i].len;
    }
    return (size_t)(p - out);
}

void pg_conninfo_where(const char *conninfo, char *out, size_t cap)
{
    PQconninfoOption *opts, *o;
    const char *host = NULL, *hostaddr = NULL, *port = NULL, *db = NULL;
    char *errmsg = NULL;

    opts = PQconninfoParse(conninfo ? conninfo : "", &errmsg);
    PQfreemem(errmsg); /* may quote the conninfo: never shown */
    if (!opts) {
        snprintf(out, cap, "unparsable conninfo");
        return;
    }
    for (o = opts; o->keyword; o++) {
        if (!o->val || !o->val[0])
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
    }
    if (!host)
        host = hostaddr;
    snprintf(out, cap, "%s%s%s%s%s", host ? host : "local socket",
             port ? ":" : "", port ? port : "", db ? "/" : "", db ? db : "");
    PQconninfoFree(opts);
}

bool pg_conninfo_valid(const char *conninfo)
{
    PQconninfoOption *opts;
    char *errmsg = NULL;

    opts = PQconninfoParse(conninfo ? conninfo : "", &errmsg);
    PQfreemem(errmsg);
    PQconninfoFree(opts);
    return opts != NULL;
}

char *pg_one_line(char *msg)
{
    char *r = msg, *w = msg;
    bool space = false;

    for (; *r; r++) {
        char c = *r;
        if (c == '\n' || c == '\r' || c == '\t')
            c = ' ';
        if (c == ' ') {
            if (!space && w != msg)
                *w++ = ' ';
            space = true;
            continue;
        }
        space = false;
        *w++ = c;
    }
    while (w > msg && w[-1] == ' ')
        w--;
    *w = '\0';
    return msg;
}

uint32_t pg_backoff_next(uint32_t cur)
{
    if (cur < PG_BACKOFF_MIN_MS)
        return PG_BACKOFF_MIN_MS;
    return cur >= PG_BACKOFF_MAX_MS / 2 ? PG_BACKOFF_MAX_MS : cur * 2;
}

char *pg_sql_expand(const char *tmpl, const char *table, const char *index)
{
    size_t tlen = strlen(table), ilen = strlen(index), n = 0;
    const char *p;
    char *out, *w;

    for (p = tmpl; *p; p++) {
        if (p[0] == '@' && (p[1] == 'T' || p[1] == 'I')) {
            n += p[1] == 'T' ? tlen : ilen;
            p++;
        } else {
            n++;
        }
    }
    out = malloc(n + 1);
    if (!out)
        return NULL;
    for (p = tmpl, w = out; *p; p++) {
        if (p[0] == '@' && (p[1] == 'T' || p[1] == 'I')) {
            const char *s = p[1] == 'T' ? table : index;
            size_t len = p[1] == 'T' ? tlen : ilen;
            memcpy(w, s, len);
            w += len;
            p++;
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
    return out;
}
