"""What a data scientist would otherwise write in Python, timed the same way as Global Brain:
from the EDF file on disk to Parquet on disk.

  mne    MNE read_raw_edf (read_raw_bdf for BDF) with preload=True, then pyarrow write_table of
         the physical values.
  numpy  a hand-written numpy decode of the raw samples, then pyarrow zstd Parquet of the
         digital values: the lossless floor a careful engineer reaches in Python.

Usage: pipelines.py {mne|numpy} EDF OUT.parquet   (prints one JSON line)
"""
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def header(path):
    with open(path, "rb") as f:
        h = f.read(256)
        ns = int(h[252:256])
        h += f.read(256 * ns)
    bdf = h[0] == 0xFF
    labels = [h[256 + 16 * i:256 + 16 * (i + 1)].decode().strip() for i in range(ns)]
    off = 256 + ns * (16 + 80 + 8 * 5 + 80)
    spr = [int(h[off + 8 * i:off + 8 * (i + 1)]) for i in range(ns)]
    return {"bdf": bdf, "ns": ns, "labels": labels, "spr": spr, "header_bytes": 256 * (ns + 1)}


def numpy_pipeline(path, out):
    t0 = time.perf_counter()
    h = header(path)
    bps = 3 if h["bdf"] else 2
    raw = np.fromfile(path, dtype=np.uint8, offset=h["header_bytes"])
    rec = sum(h["spr"]) * bps
    records = raw.reshape(-1, rec)
    columns = {}
    at = 0
    samples = 0
    for label, spr in zip(h["labels"], h["spr"]):
        block = records[:, at:at + spr * bps]
        at += spr * bps
        if label.endswith("Annotations"):
            continue
        if h["bdf"]:
            b = block.reshape(-1, 3).astype(np.int32)
            v = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16))
            v = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.int32)
        else:
            v = np.ascontiguousarray(block).view("<i2").reshape(-1)
        columns[label] = pa.array(v)
        samples += len(v)
    # One table per channel length: channels of different rates cannot share rows.
    by_len = {}
    for k, v in columns.items():
        by_len.setdefault(len(v), {})[k] = v
    size = 0
    for i, cols in enumerate(by_len.values()):
        target = out if len(by_len) == 1 else f"{out}.{i}"
        pq.write_table(pa.table(cols), target, compression="zstd")
        size += os.path.getsize(target)
    return time.perf_counter() - t0, samples, size


def mne_pipeline(path, out):
    import mne
    mne.set_log_level("ERROR")
    t0 = time.perf_counter()
    read = mne.io.read_raw_bdf if path.lower().endswith(".bdf") else mne.io.read_raw_edf
    raw = read(path, preload=True, verbose="ERROR")
    data = raw.get_data()
    table = pa.table({name: data[i] for i, name in enumerate(raw.ch_names)})
    pq.write_table(table, out)
    return time.perf_counter() - t0, int(data.size), os.path.getsize(out)


if __name__ == "__main__":
    which, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds, samples, size = (numpy_pipeline if which == "numpy" else mne_pipeline)(path, out)
    print(json.dumps({"pipeline": which, "seconds": seconds, "samples": samples, "parquet_bytes": size}))
