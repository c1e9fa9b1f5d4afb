#!/usr/bin/env python3
"""Write tests/fixtures/data_st_py.safetensors: a small safetensors file made
without our C code (json + numpy, following the format's specification:
u64le header length, compact JSON header padded with spaces to a multiple of
8 bytes, little-endian tensor data in header order). test_safetensors reads it
and checks that moexc_st_save writes the same bytes.

    /usr/bin/python3 tools/make_st_fixture.py [out_path]
"""
import json
import struct
import sys

import numpy as np


def tensors():
    # Values that C can recompute exactly (see test_safetensors.c).
    i = np.arange(12)
    embed = (((i * 37) % 101 - 50) / 8.0).astype(np.float32).reshape(4, 3)
    scalar = np.array(0.1, dtype=np.float32)
    empty = np.zeros((0, 3), dtype=np.float32)
    special = np.array([-0.0, 1e-45, 3.4028235e38, -1.5, 2.0 ** -20, 1.0 / 3.0, -7.25, 65504.0],
                       dtype=np.float32).reshape(2, 2, 2)
    return [("embed.weight", embed), ("scalar", scalar), ("empty", empty), ("layers.0.w", special)]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/data_st_py.safetensors"
    header = {"__metadata__": {"format": "pt", "note": "h\u00e9llo \"quoted\"\n\ttab \u0001 \u2713 \U0001F600 back\\slash"}}
    offset = 0
    blobs = []
    for name, arr in tensors():
        data = arr.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    print("wrote %s (%d bytes)" % (out, 8 + len(text) + offset))


if __name__ == "__main__":
    main()
