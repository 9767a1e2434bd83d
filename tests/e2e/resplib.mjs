// The RESP (Redis protocol) reply parser shared by the e2e tests that
// talk to redis-server directly (cluster.test.mjs, redis.test.mjs).

/* Parses one RESP reply at pos: {value, end}, or null while incomplete.
 * Errors become Error values, bulk strings Buffers, nil null. */
export function parseResp(buf, pos) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) return null;
    const type = String.fromCharCode(buf[pos]);
    const line = buf.subarray(pos + 1, eol).toString('latin1');
    const next = eol + 2;
    switch (type) {
    case '+': return { value: line, end: next };
    case '-': return { value: new Error(line), end: next };
    case ':': return { value: Number(line), end: next };
    case '$': {
        const n = Number(line);
        if (n < 0) return { value: null, end: next };
        if (buf.length < next + n + 2) return null;
        return { value: Buffer.from(buf.subarray(next, next + n)), end: next + n + 2 };
    }
    case '*': {
        const n = Number(line);
        if (n < 0) return { value: null, end: next };
        const items = [];
        let p = next;
        for (let i = 0; i < n; i++) {
            const r = parseResp(buf, p);
            if (!r) return null;
            items.push(r.value);
            p = r.end;
        }
        return { value: items, end: p };
    }
    default:
        throw new Error(`unexpected RESP type ${JSON.stringify(type)}`);
    }
}
