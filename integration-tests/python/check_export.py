"""Reads a source EDF/BDF and its Global Brain export with pyedflib and checks that the
export carries the same signals: digital values equal, physical values equal, labels, units,
rates, ranges, prefiltering and annotations intact, and the time of day kept.

Usage: check_export.py SOURCE EXPORT  (prints a JSON summary; exits 1 on a mismatch)
"""
import json
import sys

import numpy as np
import pyedflib


def main(src_path, exp_path):
    src = pyedflib.EdfReader(src_path)
    exp = pyedflib.EdfReader(exp_path)
    problems = []

    def check(cond, what):
        if not cond:
            problems.append(what)

    check(src.signals_in_file == exp.signals_in_file, "signal count")
    samples = 0
    for i in range(min(src.signals_in_file, exp.signals_in_file)):
        for name in ("getLabel", "getPhysicalDimension", "getSampleFrequency", "getPhysicalMinimum",
                     "getPhysicalMaximum", "getDigitalMinimum", "getDigitalMaximum", "getPrefilter",
                     "getTransducer"):
            a, b = getattr(src, name)(i), getattr(exp, name)(i)
            check(a == b, f"signal {i} {name}: {a!r} != {b!r}")
        da = src.readSignal(i, digital=True)
        db = exp.readSignal(i, digital=True)
        check(np.array_equal(da, db), f"signal {i} digital values differ")
        pa = src.readSignal(i)
        pb = exp.readSignal(i)
        check(np.array_equal(pa, pb), f"signal {i} physical values differ")
        samples += len(db)

    on_a, du_a, tx_a = src.readAnnotations()
    on_b, du_b, tx_b = exp.readAnnotations()
    check(list(tx_a) == list(tx_b), f"annotation texts {list(tx_a)} != {list(tx_b)}")
    if len(on_a) == len(on_b):
        check(np.allclose(on_a, on_b, atol=1e-6), "annotation onsets")
        check(np.allclose(du_a, du_b, atol=1e-6), "annotation durations")
    check(src.getStartdatetime().time() == exp.getStartdatetime().time(), "time of day")
    check(exp.getPatientName() in ("", "X"), "patient name in export")
    check(exp.getBirthdate() in ("", "X"), "birth date in export")
    check(exp.getTechnician() in ("", "X"), "technician in export")
    check(exp.getEquipment() in ("", "X"), "equipment in export")

    print(json.dumps({
        "source": src_path,
        "export": exp_path,
        "filetype": exp.filetype,
        "signals": exp.signals_in_file,
        "samples": int(samples),
        "annotations": len(tx_b),
        "patient_code": exp.getPatientCode(),
        "problems": problems,
    }))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
