#!/usr/bin/env python3
"""The shipped pipeline as users run it: pipeline.toml as it is, views included.

    benches/shipped.py --tunelake target/release/tunelake [--scale 1] [--work DIR]

On a SQLite source seeded at `--scale` (`tunelake seed`), measures under /usr/bin/time:
  1. full: the first `tunelake run`;
  2. incremental: `tunelake seed --incremental` (a 10% batch: ~10% of users changed, 5% new,
     1% of tracks and artists changed, 10% more streams), then `tunelake run`;
  3. views: the two views' seconds in that incremental run (incremental refresh), against the
     same views rebuilt whole on a copy of the lake (the pipeline without incremental_strategy);
  4. correction: every user's country changed as of 2024-09-01 (a late version for every user,
     back-filled with `tunelake ingest --from`), then `tunelake run`: millions of facts move.
Prints one markdown table (wall s, peak RSS MB, and the view ratio) for benches/README.md.
Not part of CI.
"""
import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import time


def timed(cmd, cwd):
    """Runs `cmd` under /usr/bin/time -v; returns (wall seconds, peak RSS MB, stdout)."""
    start = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return wall, int(rss.group(1)) / 1024 if rss else float("nan"), p.stdout


def view_seconds(tl, cwd, config=None, lake="lake"):
    """Seconds of each view in the latest gold stage, from the event log."""
    args = [tl, "-q", "--lake", lake] + (["--config", config] if config else [])
    sql = ("SELECT \"table\", seconds, rows_out FROM system.events WHERE stage = 'gold' AND "
           "started_at = (SELECT max(started_at) FROM system.events WHERE stage = 'gold') "
           "AND \"table\" IN ('stream_details', 'top_tracks_per_day') ORDER BY 1")
    out = subprocess.run(args + ["sql", "--format", "csv", sql], cwd=cwd, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    rows = [l.split(",") for l in out.strip().splitlines()[1:]]
    return {t: (float(s), int(r)) for t, s, r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tunelake", required=True)
    ap.add_argument("--scale", type=float, default=1)
    ap.add_argument("--work", default="/tmp/tunelake-shipped")
    a = ap.parse_args()
    tl = os.path.abspath(a.tunelake)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    shutil.copy(os.path.join(repo, "pipeline.toml"), a.work)
    shutil.copytree(os.path.join(repo, "templates"), os.path.join(a.work, "templates"))
    subprocess.run([tl, "-q", "seed", "--scale", str(a.scale)], cwd=a.work, check=True)
    results = {}
    results["full"] = timed([tl, "-q", "run"], a.work)[:2]
    subprocess.run([tl, "-q", "seed", "--incremental"], cwd=a.work, check=True)
    # The lake as the incremental run found it, for the rebuild beside it.
    shutil.copytree(os.path.join(a.work, "lake"), os.path.join(a.work, "lake-rebuild"))
    results["incremental"] = timed([tl, "-q", "run"], a.work)[:2]
    refreshed = view_seconds(tl, a.work)

    # The same run on the copy, with views that rebuild whole.
    plain = open(os.path.join(a.work, "pipeline.toml")).read()
    plain = re.sub(r'^(incremental_strategy|unique_key|partition_by) = .*$', "", plain, flags=re.M)
    open(os.path.join(a.work, "rebuild.toml"), "w").write(plain)
    timed([tl, "-q", "--config", "rebuild.toml", "--lake", "lake-rebuild", "run"], a.work)
    rebuilt = view_seconds(tl, a.work, "rebuild.toml", "lake-rebuild")
    shutil.rmtree(os.path.join(a.work, "lake-rebuild"))

    # A late correction: every user's country changed as of 2024-09-01.
    con = sqlite3.connect(os.path.join(a.work, "source.db"))
    con.execute("UPDATE DimUser SET country = 'X' || country, updated_at = '2024-09-01 00:00:00.000000'")
    con.commit()
    con.close()
    subprocess.run([tl, "-q", "ingest", "--table", "DimUser", "--from", "2024-08-31"], cwd=a.work, check=True)
    results["correction"] = timed([tl, "-q", "run"], a.work)[:2]
    moved = subprocess.run(
        [tl, "-q", "sql", "--format", "csv",
         "SELECT rows_in, rows_out FROM system.events WHERE stage = 'gold' AND \"table\" = 'fact_stream' "
         "ORDER BY started_at DESC LIMIT 1"],
        cwd=a.work, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]

    print(f"### Shipped pipeline, scale {a.scale:g} (SQLite source, views included)\n")
    print("| run | wall s | peak RSS MB |")
    print("|---|---:|---:|")
    for name, (wall, rss) in results.items():
        print(f"| {name} | {wall:.2f} | {rss:.0f} |")
    print("\n| view | incremental refresh s (rows written) | rebuild s (rows) | ratio |")
    print("|---|---:|---:|---:|")
    total = [0.0, 0.0]
    for view in sorted(refreshed):
        (s_inc, r_inc), (s_full, r_full) = refreshed[view], rebuilt[view]
        total[0] += s_inc
        total[1] += s_full
        print(f"| {view} | {s_inc:.2f} ({r_inc:,}) | {s_full:.2f} ({r_full:,}) | {s_inc / s_full:.2f} |")
    print(f"| both | {total[0]:.2f} | {total[1]:.2f} | {total[0] / total[1]:.2f} |")
    print(f"\nCorrection run: fact_stream rows_in, rows_out of its last gold event: {moved}")


if __name__ == "__main__":
    main()
