"""The query benchmark's Python side: our Flight SQL server end to end through ADBC, and the same
four queries in DuckDB and polars on the peers' Parquet. Prints a JSON report on stdout:
{"times": {system: [[seconds per run] per query]}, "checks": {...}}.

Usage: query_peers.py SPEC_JSON (written by bench/src/bin/query.rs)
"""

import json
import sys
import time

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import numpy as np
import polars as pl
from adbc_driver_flightsql import DatabaseOptions
from scipy.signal import welch

BANDS = {"alpha": (8.0, 13.0), "beta": (13.0, 30.0)}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def timed(fn, runs):
    """One warm-up run, then `runs` timed runs; returns (times, last result)."""
    result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def band_powers(x, fs):
    """Welch band power of each row of x, as ours computes it (scipy's Welch, 1 s segments)."""
    n = x.shape[1]
    nperseg = min(n, 1 << int(np.ceil(np.log2(fs))))
    f, psd = welch(x, fs=fs, window="hann", nperseg=nperseg, noverlap=nperseg // 2,
                   detrend="constant", scaling="density", axis=-1)
    df = f[1] - f[0]
    out = {}
    for name, (lo, hi) in BANDS.items():
        mask = (f >= lo - 1e-9) & (f <= hi + 1e-9)
        out[name] = psd[:, mask].sum(axis=1) * df
    return out


def main():
    spec = json.loads(sys.argv[1])
    fs = spec["rate"]
    k0, k1 = round(-0.2 * fs), round(0.8 * fs)
    peers = spec["peers"]
    runs, slow = spec["runs"], spec["slow_runs"]
    rec, chan = spec["recording"], spec["channel"]
    times = {"ours": [], "duckdb": [], "polars": []}
    results = {"ours": [], "duckdb": [], "polars": []}

    # Ours, end to end: ADBC's Flight SQL driver, fetching Arrow tables.
    conn = flightsql.connect(
        f"grpc://{spec['flight']}",
        db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {spec['token']}"},
    )

    def ours(sql):
        def run():
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetch_arrow_table()
        return run

    t, _ = timed(ours("SELECT 1"), runs)
    times["ours_select_1"] = t
    log(f"ours e2e SELECT 1: median {np.median(t):.4f} s")
    for q, sql in enumerate(spec["ours_sql"]):
        t, r = timed(ours(sql), slow if q < 2 else runs)
        times["ours"].append(t)
        results["ours"].append(r.to_pandas())
        log(f"ours e2e q{q + 1}: median {np.median(t):.4f} s, {r.num_rows} rows")
    conn.close()

    # DuckDB, in-process, on Parquet hive-partitioned by recording.
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW samples AS SELECT * FROM read_parquet('{peers}/samples/*/*.parquet', hive_partitioning = true)"
    )
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{peers}/events.parquet')")
    duck_q1 = f"""
        WITH ev AS (SELECT recording_id, type, CAST(round(onset * {fs}) AS BIGINT) AS s0
                    FROM events WHERE type IN ('left', 'right')),
             keys AS (SELECT recording_id, type, s0 + k AS sample_index, k
                      FROM ev, (SELECT range AS k FROM range({k0}, {k1 + 1})))
        SELECT keys.type AS event_type, s.channel, keys.k / {fs}.0 AS t_rel,
               avg(s.value) AS value, count(*) AS epochs
        FROM keys JOIN samples s USING (recording_id, sample_index)
        GROUP BY ALL"""
    duck_q2 = f"""
        WITH ev AS (SELECT recording_id, onset, type, CAST(round(onset * {fs}) AS BIGINT) AS s0
                    FROM events WHERE type IN ('left', 'right')),
             keys AS (SELECT recording_id, onset, type, s0 + k AS sample_index, k
                      FROM ev, (SELECT range AS k FROM range(0, {fs + 1})))
        SELECT keys.recording_id, keys.onset, keys.type AS event_type, s.channel,
               list(s.value ORDER BY keys.k) AS x
        FROM keys JOIN samples s USING (recording_id, sample_index)
        GROUP BY ALL"""
    duck_q3 = """SELECT recording_id, count(*) AS events, avg(response_time) AS mean_rt
                 FROM events GROUP BY recording_id"""
    lo, hi = spec["q4_range"]
    duck_q4 = f"""SELECT t, value FROM samples WHERE recording_id = '{rec}'
                  AND channel = '{chan}' AND t BETWEEN {lo} AND {hi}"""

    def duck(sql):
        return lambda: con.execute(sql).to_arrow_table()

    def duck_power():
        t = con.execute(duck_q2).to_arrow_table()
        x = np.asarray(t.column("x").combine_chunks().flatten()).reshape(t.num_rows, -1)
        p = band_powers(x, fs)
        return t.drop_columns(["x"]), p

    for q, fn in enumerate([duck(duck_q1), duck_power, duck(duck_q3), duck(duck_q4)]):
        t, r = timed(fn, slow if q < 2 else runs)
        times["duckdb"].append(t)
        results["duckdb"].append(r)
        log(f"duckdb q{q + 1}: median {np.median(t):.4f} s")

    # polars, lazy scans over the same files.
    samples = pl.scan_parquet(f"{peers}/samples/*/*.parquet", hive_partitioning=True)
    events = pl.scan_parquet(f"{peers}/events.parquet")

    def pol_keys(lo, hi):
        ks = pl.LazyFrame({"k": list(range(lo, hi + 1))}, schema={"k": pl.Int64})
        return (
            events.filter(pl.col("type").is_in(["left", "right"]))
            .with_columns(s0=(pl.col("onset") * fs).round().cast(pl.Int64))
            .join(ks, how="cross")
            .with_columns(sample_index=pl.col("s0") + pl.col("k"))
        )

    def pol_q1():
        return (
            pol_keys(k0, k1)
            .join(samples, on=["recording_id", "sample_index"])
            .group_by(["type", "channel", "k"])
            .agg(pl.col("value").mean(), pl.len().alias("epochs"))
            .collect()
        )

    recordings = events.select("recording_id").unique().sort("recording_id").collect()[
        "recording_id"
    ].to_list()

    def pol_q2():
        # One recording at a time: the whole join does not fit in memory here.
        metas, powers = [], {b: [] for b in BANDS}
        keys = pol_keys(0, fs)
        for r in recordings:
            df = (
                keys.filter(pl.col("recording_id") == r)
                .join(samples.filter(pl.col("recording_id") == r), on=["recording_id", "sample_index"])
                .sort("k")
                .group_by(["recording_id", "onset", "type", "channel"])
                .agg(pl.col("value"))
                .collect()
            )
            x = df["value"].list.to_array(fs + 1).to_numpy()
            p = band_powers(x, fs)
            metas.append(df.drop("value"))
            for b in BANDS:
                powers[b].append(p[b])
        return pl.concat(metas), {b: np.concatenate(v) for b, v in powers.items()}

    def pol_q3():
        return (
            events.group_by("recording_id")
            .agg(pl.len().alias("events"), pl.col("response_time").mean().alias("mean_rt"))
            .collect()
        )

    def pol_q4():
        return (
            samples.filter(
                (pl.col("recording_id") == rec)
                & (pl.col("channel") == chan)
                & pl.col("t").is_between(lo, hi)
            )
            .select("t", "value")
            .collect()
        )

    for q, fn in enumerate([pol_q1, pol_q2, pol_q3, pol_q4]):
        t, r = timed(fn, slow if q < 2 else runs)
        times["polars"].append(t)
        results["polars"].append(r)
        log(f"polars q{q + 1}: median {np.median(t):.4f} s")

    # Do the three agree?
    checks = {}
    o1 = results["ours"][0]
    o1 = o1.assign(k=np.round(o1["t_rel"] * fs).astype(int))
    d1 = results["duckdb"][0].to_pandas()
    d1 = d1.assign(k=np.round(d1["t_rel"] * fs).astype(int))
    m = o1.merge(d1, on=["event_type", "channel", "k"], suffixes=("", "_d"))
    checks["q1_rows"] = [len(o1), len(d1), results["polars"][0].height]
    checks["q1_max_abs_diff_vs_duckdb"] = float((m["value"] - m["value_d"]).abs().max())
    o2 = results["ours"][1]
    dmeta, dp = results["duckdb"][1]
    d2 = dmeta.to_pandas()
    for b in BANDS:
        d2[b] = dp[b]
    d2 = d2.melt(id_vars=["recording_id", "onset", "event_type", "channel"],
                 value_vars=list(BANDS), var_name="band", value_name="power_d")
    m2 = o2.merge(d2, on=["recording_id", "onset", "channel", "band"])
    checks["q2_rows"] = [len(o2), len(d2), results["polars"][1][0].height * len(BANDS)]
    checks["q2_matched"] = len(m2)
    checks["q2_max_rel_diff_vs_duckdb"] = float(
        ((m2["power"] - m2["power_d"]).abs() / m2["power_d"].abs().clip(lower=1e-12)).max()
    )
    o3 = results["ours"][2].sort_values("recording_id")
    d3 = results["duckdb"][2].to_pandas().sort_values("recording_id")
    checks["q3_counts_equal"] = bool((o3["events"].values == d3["events"].values).all())
    checks["q3_max_rt_diff"] = float(np.abs(o3["mean_rt"].values - d3["mean_rt"].values).max())
    checks["q4_rows"] = [len(results["ours"][3]), results["duckdb"][3].num_rows,
                         results["polars"][3].height]
    print(json.dumps({"times": times, "checks": checks}))


if __name__ == "__main__":
    main()
