"""Runs a Flight SQL query over TLS with ADBC's driver from PyPI and prints what it saw.

Usage: check_tls.py HOST:PORT TOKEN CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM

The query (`SELECT count(*) FROM recordings` over grpc+tls://) runs three times: trusting the
CA and presenting the client certificate, trusting the CA without a certificate, and trusting
only the system's roots. The JSON report holds each count or the error it raised; the Rust
test decides which must pass.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions


def count(addr, token, ca=None, cert=None, key=None):
    kwargs = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    if ca is not None:
        kwargs[DatabaseOptions.TLS_ROOT_CERTS.value] = ca
    if cert is not None:
        kwargs[DatabaseOptions.MTLS_CERT_CHAIN.value] = cert
        kwargs[DatabaseOptions.MTLS_PRIVATE_KEY.value] = key
    with flightsql.connect(f"grpc+tls://{addr}", db_kwargs=kwargs) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM recordings")
            return cur.fetch_arrow_table().column("n")[0].as_py()


def attempt(fn):
    try:
        return {"count": fn()}
    except Exception as e:  # noqa: BLE001 - the report says what failed
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    addr, token, ca_path, cert_path, key_path = sys.argv[1:6]
    ca, cert, key = (open(p).read() for p in (ca_path, cert_path, key_path))
    report = {
        "with_certificate": attempt(lambda: count(addr, token, ca, cert, key)),
        "without_certificate": attempt(lambda: count(addr, token, ca)),
        "without_the_ca": attempt(lambda: count(addr, token)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
