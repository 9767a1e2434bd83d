#!/usr/bin/env python3
"""ws_seed.py - writes a fuzz_ws input (the record format described at the
top of tests/fuzz/fuzz_ws.c) from a list of steps.

    tests/fuzz/ws_seed.py OUT STEP...

A step is a JSON text sent as one masked text frame, or one of
    !frag:TEXT   TEXT as a text frame plus a continuation frame
    !fragping:TEXT  the same with a ping between the two
    !ping  !pong  !close  control frames with an empty payload
    !closecode   a close frame carrying code 1000 and a reason
    !binary:TEXT TEXT in a binary frame
    !raw:HEX     bytes written verbatim
    !flush       a segment boundary
Example:
    tests/fuzz/ws_seed.py tests/fuzz/corpus/ws/subscribe \\
        '{"op":"subscribe","topics":["a","kv.*"],"id":1}' '!flush' '!close'
"""
import sys


def data_record(payload, flags=0):
    if len(payload) > 255:
        return bytes([flags | 4, len(payload) >> 8, len(payload) & 255]) + payload
    return bytes([flags, len(payload)]) + payload


def control_record(opcode_index, payload=b""):
    return bytes([1 | opcode_index << 2, len(payload)]) + payload


def step(s):
    if s == "!flush":
        return b"\x03"
    if s == "!ping":
        return control_record(0)
    if s == "!pong":
        return control_record(1)
    if s == "!close":
        return control_record(2)
    if s == "!closecode":
        return control_record(2, b"\x03\xe8bye")
    if s.startswith("!frag:"):
        return data_record(s[6:].encode(), 8)
    if s.startswith("!fragping:"):
        return data_record(s[10:].encode(), 8 | 16)
    if s.startswith("!binary:"):
        return data_record(s[8:].encode(), 64)
    if s.startswith("!raw:"):
        raw = bytes.fromhex(s[5:])
        if len(raw) > 255:
            return bytes([2 | 4, len(raw) >> 8, len(raw) & 255]) + raw
        return bytes([2, len(raw)]) + raw
    return data_record(s.encode())


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1], "wb") as f:
        f.write(b"".join(step(s) for s in sys.argv[2:]))


if __name__ == "__main__":
    main()
