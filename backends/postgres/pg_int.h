/*
 * pg_int.h - internals shared by the files of the postgres backend and its
 * unit tests: the named constants, and the pure functions that turn kvbus
 * requests into SQL text and parameters and PostgreSQL answers back into
 * kvbus codes (identifier quoting, LIKE escaping, value placement, binary
 * parameter encoding, SQLSTATE mapping, the server label used in logs).
 * Keys cursors are the kvstore core's (kv_cursor_encode in kvstore.h).
 * Nothing here touches the network or the loop; every function is safe on
 * any thread.
 */
#ifndef KVBUS_BACKEND_PG_INT_H
#define KVBUS_BACKEND_PG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstore/kvstore.h"

#define PG_POOL_CONNS 4            /* connections per server and loop */
#define PG_QUEUE_MAX 4096          /* calls waiting per pool / per store */
#define PG_BACKOFF_MIN_MS 100      /* first reconnect delay after a failure */
#define PG_BACKOFF_MAX_MS 5000     /* reconnect delays double up to this */
#define PG_CONNECT_TIMEOUT_MS 5000 /* to complete one connection attempt */
#define PG_SWEEP_INTERVAL_MS 60000 /* between two sweeps of expired rows */
#define PG_SWEEP_AGAIN_MS 1000     /* next sweep when a batch was full */
#define PG_SWEEP_BATCH 1000        /* rows deleted by one sweep statement */
#define PG_SETUP_ATTEMPTS 3        /* CREATE TABLE tries on a creation race */
#define PG_IDENT_MAX 63            /* bytes in a PostgreSQL identifier */
#define PG_HASH_HEX 16             /* XXH3-64 suffix of shortened names */
#define PG_WHERE_MAX 160           /* "host:port/db" label, NUL included */

/* PostgreSQL type OIDs of the parameters kvbus sends (pg_type.dat). */
#define PG_OID_BYTEA 17
#define PG_OID_INT8 20
#define PG_OID_TEXT 25
#define PG_OID_TEXT_ARRAY 1009

/* Where a value is stored: the column of Nuxeo's layout it goes to. */
typedef enum pg_place {
    PG_PLACE_LONG,   /* canonical 64-bit decimal text */
    PG_PLACE_STRING, /* other valid UTF-8 without NUL */
    PG_PLACE_BYTES,  /* anything else */
} pg_place;

/*
 * The column value goes to. For PG_PLACE_LONG, *num receives the integer
 * (num may be NULL).
 */
pg_place pg_classify(kv_bytes value, int64_t *num);

/*
 * Writes name as a quoted SQL identifier ("a.b" -> "\"a.b\"", embedded
 * quotes doubled) into out, NUL-terminated, when it fits in cap bytes.
 * Returns the length of the quoted form (without the NUL) whatever cap is,
 * so a caller may size its buffer with a first call: 2 * strlen + 3 bytes
 * always suffice.
 */
size_t pg_quote_ident(const char *name, char *out, size_t cap);

/*
 * The table of store `store`: `table` when configured (conf->table), else
 * "kv_<store>". A default name longer than PG_IDENT_MAX bytes is shortened
 * to its first bytes, '_' and the XXH3-64 of the full name in hex, so that
 * distinct stores never share a table; a configured name that long is
 * refused (PostgreSQL would silently truncate it). out receives the
 * unquoted name. Returns 0 or KV_EINVAL (empty or too long `table`).
 */
int pg_table_name(const char *store, const char *table,
                  char out[PG_IDENT_MAX + 1], kv_err *err);

/* The name of the ttl index of a table: "<table>_ttl_idx", shortened like
 * a default table name when longer than PG_IDENT_MAX bytes. */
void pg_index_name(const char *table, char out[PG_IDENT_MAX + 1]);

/*
 * The LIKE pattern matching every string that starts with prefix, taken
 * literally: '\\', '%' and '_' are escaped with '\\' (the statement says
 * ESCAPE '\\'), then '%' is appended. out needs 2 * prefix.len + 2 bytes;
 * the result is NUL-terminated. Returns its length.
 */
size_t pg_like_prefix(kv_bytes prefix, char *out);

/*
 * The kvbus code for a PostgreSQL SQLSTATE (5 characters; NULL or
 * malformed counts as unknown): 22003 numeric_value_out_of_range ->
 * KV_EOVERFLOW; 22001 (a key longer than a bounded `key` column of a
 * shared table), 22021, 22P05 (text the database encoding cannot hold) ->
 * KV_EINVAL; everything else -> KV_EUNAVAIL, since a statement kvbus
 * built can only fail because of the server (down, shutting down, out of
 * resources, a missing table, a lock or serialization conflict,
 * permissions).
 */
int pg_sqlstate_code(const char *sqlstate);

/* True for the SQLSTATEs of a lost CREATE TABLE IF NOT EXISTS race
 * (class 23 integrity violations, 42P07 duplicate_table): retry. */
bool pg_sqlstate_setup_race(const char *sqlstate);

/* The 8 bytes of v in network order (a binary int8 parameter), and back. */
void pg_put_be64(char out[8], int64_t v);
int64_t pg_get_be64(const char *in);

/* Bytes of the binary text[] parameter for these n keys. */
size_t pg_text_array_size(const kv_bytes *keys, size_t n);

/*
 * Writes the binary wire form of a one-dimensional text[] holding keys
 * (array_recv's format: ndim, has-null flag, element OID, dimension and
 * lower bound, then each element as length + bytes) into out, which holds
 * pg_text_array_size(keys, n) bytes. Returns the bytes written.
 */
size_t pg_text_array_encode(const kv_bytes *keys, size_t n, char *out);

/*
 * A label for the server of conninfo, for logs and error messages, that
 * never includes the password: "host:port/dbname" with what the conninfo
 * sets ("local socket" without a host; "unparsable conninfo" when libpq
 * cannot parse it). Written NUL-terminated into out (cap bytes).
 */
void pg_conninfo_where(const char *conninfo, char *out, size_t cap);

/*
 * True when libpq can parse conninfo (a key=value string or a
 * postgresql:// URL; NULL or "" means libpq's defaults). libpq's own
 * message is not kept: it may quote the string, password included.
 */
bool pg_conninfo_valid(const char *conninfo);

/* Rewrites a libpq message in place as one line: newlines and tabs become
 * spaces, runs of spaces collapse, trailing blanks go. Returns msg. */
char *pg_one_line(char *msg);

/* The reconnect delay after one at cur ms: doubles from PG_BACKOFF_MIN_MS
 * (when cur is 0) up to PG_BACKOFF_MAX_MS. */
uint32_t pg_backoff_next(uint32_t cur);

/*
 * Expands an SQL template: every "@T" becomes table and every "@I" becomes
 * index (both already quoted). Returns a malloc'd string the caller frees,
 * or NULL when out of memory.
 */
char *pg_sql_expand(const char *tmpl, const char *table, const char *index);

#endif
