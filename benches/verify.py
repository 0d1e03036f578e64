#!/usr/bin/env python3
"""Digest agreement between tunelake's lake and the peers' outputs, on the columns and rows
that tunelake's contract defines the same way as the peers' spec.

    benches/verify.py --tunelake work/out/tunelake/sf1/lake work/out/duckdb/sf1 work/out/polars_delta/sf1

Where the contracts differ, the comparison is narrowed, not skipped (see benches/README.md):
- silver is a change log in tunelake and a current-state upsert in the peers: users and tracks
  are compared on each key's latest row;
- SCD2 history differs (tunelake versions every distinct change it extracted): dimensions are
  compared on their current rows, without surrogate keys or validity dates, and every
  dimension without tunelake's unknown member (key NULL);
- fact surrogate keys are point in time in tunelake: the fact is compared on its natural
  columns (every row).
dim_track's artist_name and genre, copied from the artist's current row when a track version
is written (the pipeline file's dimension `lookups`), are compared like its other columns.
Each table's digest is its row count plus order-independent sums of 64-bit row hashes over the
columns cast to canonical types. Exit code 1 when a table disagrees.
"""
import argparse
import os
import sys

import polars as pl

# (layer, table): (columns, rows kept, key for "latest row per key" or None)
CHECKS = {
    ("silver", "users"): (["user_id", "user_name", "country", "subscription_type", "start_date", "end_date",
                           "is_active", "updated_at"], None, "user_id"),
    ("silver", "tracks"): (["track_id", "track_name", "artist_id", "album_name", "duration_sec", "duration_min",
                            "duration_flag", "release_date", "updated_at"], None, "track_id"),
    ("silver", "dates"): (["date_key", "date", "day", "month", "year", "weekday", "is_weekend"], None, None),
    ("silver", "streams"): (["stream_id", "user_id", "track_id", "date_key", "listen_duration",
                             "listen_duration_min", "device_type", "stream_timestamp"], None, None),
    ("gold", "dim_user"): (["user_id", "user_name", "country", "subscription_type", "start_date", "end_date",
                            "is_active"], "current", None),
    ("gold", "dim_track"): (["track_id", "track_name", "artist_id", "artist_name", "genre", "album_name",
                             "duration_sec", "duration_min", "duration_flag", "release_date"], "current", None),
    ("gold", "dim_date"): (["date_key", "date", "day", "month", "year", "weekday", "is_weekend"], "known", None),
    ("gold", "fact_stream"): (["stream_id", "user_id", "track_id", "date_key", "listen_duration",
                               "listen_duration_min", "device_type", "stream_timestamp"], None, None),
}


def scan(base, layer, name):
    path = os.path.join(base, layer, name)
    if os.path.isdir(os.path.join(path, "_delta_log")):
        return pl.scan_delta(path)
    if os.path.isfile(path + ".parquet"):
        return pl.scan_parquet(path + ".parquet")
    return pl.scan_parquet(os.path.join(path, "**", "*.parquet"), hive_partitioning=False)


def canonical_type(name, dtype):
    col = pl.col(name)
    if dtype.is_integer():
        return col.cast(pl.Int64)
    if dtype.is_float() or dtype.is_decimal():
        return (col.cast(pl.Float64) * 100).round(0).cast(pl.Int64)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return col.cast(pl.Datetime("us"))
    if dtype in (pl.Categorical, pl.String) or isinstance(dtype, pl.Categorical):
        return col.cast(pl.String)
    return col


def table_digest(base, layer, name):
    cols, rows, latest_key = CHECKS[(layer, name)]
    lf = scan(base, layer, name)
    schema = lf.collect_schema()
    if rows == "current":
        lf = lf.filter(pl.col("is_current"))
    if rows in ("current", "known"):
        lf = lf.filter(pl.col(cols[0]).is_not_null())
    if latest_key:
        lf = lf.sort("updated_at").group_by(latest_key).last()
    lf = lf.select([canonical_type(c, schema[c]).alias(c) for c in cols])
    df = lf.collect()
    hashes = df.hash_rows(seed=0).to_frame("h")
    lo, hi = hashes.select((pl.col("h") % (1 << 32)).sum().alias("lo"),
                           (pl.col("h") // (1 << 32)).sum().alias("hi")).row(0)
    return df.height, f"{hi:x}-{lo:x}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tunelake", required=True, help="tunelake's lake folder")
    ap.add_argument("peers", nargs="+", help="the peers' output folders")
    a = ap.parse_args()
    outputs = [("tunelake", a.tunelake)] + [(os.path.basename(os.path.dirname(os.path.normpath(p))), p)
                                            for p in a.peers]
    ok = True
    print(f"{'table':<20}" + "".join(f"{n:>30}" for n, _ in outputs) + "  agree")
    for layer, name in CHECKS:
        found = []
        for _, path in outputs:
            try:
                rows, digest = table_digest(path, layer, name)
                found.append(f"{rows} {digest[:16]}")
            except Exception as e:  # one unreadable output must not hide the other tables
                found.append(f"error {type(e).__name__}")
        agree = len(set(found)) == 1 and not found[0].startswith("error")
        ok &= agree
        print(f"{layer + '.' + name:<20}" + "".join(f"{f:>30}" for f in found) + f"  {'yes' if agree else 'NO'}")
    print("ALL COMPARED TABLES AGREE" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
