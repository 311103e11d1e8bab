"""Drives the query service with real Flight SQL clients from PyPI and prints what they saw.

Usage: check_flight_sql.py HOST:PORT TOKEN RECORDING_ID SNAPSHOT

Every check runs; the JSON report on stdout holds each result (or the error it raised), and the
Rust test compares them with what it knows the data holds.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
from adbc_driver_flightsql import DatabaseOptions


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def statement_query(sql):
    """google.protobuf.Any{CommandStatementQuery{query}}, encoded by hand."""
    cmd = field(1, sql.encode())
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return field(1, url) + field(2, cmd)


def connect(addr, token, snapshot=None):
    kwargs = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    if snapshot:
        kwargs[DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "x-gbrain-snapshot"] = snapshot
    return flightsql.connect(f"grpc://{addr}", db_kwargs=kwargs)


def attempt(report, name, fn):
    try:
        report[name] = fn()
    except Exception as e:  # noqa: BLE001 - the report says what failed
        report[name] = {"error": f"{type(e).__name__}: {e}"}


def main():
    addr, token, recording, snapshot = sys.argv[1:5]
    report = {}
    conn = connect(addr, token)

    def arrow_table():
        with conn.cursor() as cur:
            cur.execute(
                "SELECT recording_id, channel, count(*) AS n FROM samples "
                "GROUP BY recording_id, channel ORDER BY recording_id, channel"
            )
            t = cur.fetch_arrow_table()
        assert isinstance(t, pa.Table)
        return [
            [r, c, n]
            for r, c, n in zip(
                t.column("recording_id").to_pylist(),
                t.column("channel").to_pylist(),
                t.column("n").to_pylist(),
            )
        ]

    def pandas_epochs():
        with conn.cursor() as cur:
            cur.execute(
                "SELECT epoch, channel, t_rel, value FROM epochs('left', -0.2, 0.8, 'EEG C0', ?)",
                parameters=(recording,),
            )
            df = cur.fetch_df()
        erp = df.groupby("t_rel")["value"].mean()
        return {
            "rows": int(len(df)),
            "epochs": int(df["epoch"].nunique()),
            "erp_at_0": float(erp.loc[0.0]),
            "columns": list(df.columns),
        }

    def parameters():
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) AS n FROM samples WHERE recording_id = ? AND channel = ? AND t < ?",
                parameters=(recording, "EEG C1", 2.0),
            )
            return int(cur.fetchone()[0])

    def band_power():
        with conn.cursor() as cur:
            cur.execute(
                "SELECT band, avg(power) AS p FROM epoch_band_power('left,right', 0, 1, 'alpha,beta') "
                "GROUP BY band ORDER BY band"
            )
            return [[b, float(p)] for b, p in cur.fetchall()]

    def refused():
        with conn.cursor() as cur:
            cur.execute("DROP TABLE samples")
            cur.fetchall()
        return "ran"

    def metadata():
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = sorted(
            t["table_name"]
            for cat in objects
            for s in cat["catalog_db_schemas"] or []
            if s["db_schema_name"] == "public"
            for t in s["db_schema_tables"] or []
        )
        schema = conn.adbc_get_table_schema("samples", db_schema_filter="public")
        return {"tables": tables, "samples_columns": schema.names}

    def pinned():
        c = connect(addr, token, snapshot)
        with c.cursor() as cur:
            cur.execute("SELECT count(*) FROM recordings")
            n = int(cur.fetchone()[0])
        c.close()
        return n

    def pyarrow_flight():
        client = flight.FlightClient(f"grpc://{addr}")
        options = flight.FlightCallOptions(
            headers=[(b"authorization", f"Bearer {token}".encode())]
        )
        descriptor = flight.FlightDescriptor.for_command(
            statement_query("SELECT count(*) AS n FROM events")
        )
        info = client.get_flight_info(descriptor, options)
        table = client.do_get(info.endpoints[0].ticket, options).read_all()
        return int(table.column("n")[0].as_py())

    attempt(report, "arrow_table", arrow_table)
    attempt(report, "pandas_epochs", pandas_epochs)
    attempt(report, "parameters", parameters)
    attempt(report, "band_power", band_power)
    attempt(report, "refused", refused)
    attempt(report, "metadata", metadata)
    attempt(report, "pinned", pinned)
    attempt(report, "pyarrow_flight", pyarrow_flight)
    conn.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
