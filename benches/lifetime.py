#!/usr/bin/env python3
"""A year on the timer, shortened: many constant small batches, each followed by `tunelake run`.

    benches/lifetime.py --tunelake target/release/tunelake [--batches 1000] [--scale 0.02]
                        [--streams 500] [--users 20] [--pipeline PATH] [--work DIR]

Seeds a SQLite source at `--scale`, runs the whole pipeline once, then `--batches` times:
adds `--streams` new streams and changes `--users` users (as an OLTP clock would: every change
newer than anything held), and runs `tunelake run` with the pipeline file as it is (the
shipped one unless `--pipeline` names another; views included). Prints the mean wall time of
each block of 25 runs, the mean of runs 11-60 against the last 50, and the live data files of
every silver and gold table at the end (from each Delta log), and writes all per-run times to
`<work>/lifetime.json`. Not part of CI.
"""
import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import time
from datetime import datetime, timedelta


def run(cmd, cwd):
    start = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return time.monotonic() - start


def batch(db, streams, users):
    """Adds `streams` streams and changes `users` users, all after the newest row held."""
    con = sqlite3.connect(db)
    cur = con.cursor()
    (max_stream, max_at) = cur.execute("SELECT MAX(stream_id), MAX(stream_timestamp) FROM FactStream").fetchone()
    (user_at,) = cur.execute("SELECT MAX(updated_at) FROM DimUser").fetchone()
    (max_user,) = cur.execute("SELECT MAX(user_id) FROM DimUser").fetchone()
    (max_track,) = cur.execute("SELECT MAX(track_id) FROM DimTrack").fetchone()
    base = max(datetime.fromisoformat(max_at), datetime.fromisoformat(user_at)) + timedelta(seconds=1)
    rows = []
    for i in range(streams):
        at = base + timedelta(seconds=i)
        rows.append((max_stream + 1 + i, 1 + (i * 7919) % max_user, 1 + (i * 104729) % max_track,
                     int(at.strftime("%Y%m%d")), 30 + i % 240, ["mobile", "desktop", "web"][i % 3],
                     at.strftime("%Y-%m-%d %H:%M:%S.%f")))
    cur.executemany("INSERT INTO FactStream VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    for j in range(users):
        user = 1 + (j * 15485863 + max_stream) % max_user
        at = base + timedelta(seconds=j)
        cur.execute("UPDATE DimUser SET subscription_type = ?, updated_at = ? WHERE user_id = ?",
                    (["free", "premium", "family"][(max_stream + j) % 3], at.strftime("%Y-%m-%d %H:%M:%S.%f"), user))
    con.commit()
    con.close()


def live_files(work):
    """Live data files per silver and gold table, from each table's Delta log."""
    counts = {}
    for area in ("silver", "gold"):
        folder = os.path.join(work, "lake", area)
        for name in sorted(os.listdir(folder)):
            counts[f"{area}/{name}"] = delta_live_files(os.path.join(folder, name, "_delta_log"))
    return counts


def delta_live_files(log):
    """Live files of a Delta table, replaying its JSON commits (all kept for 30 days)."""
    live = set()
    for f in sorted(os.listdir(log)):
        if not f.endswith(".json") or f.startswith("_"):
            continue
        for line in open(os.path.join(log, f)):
            action = json.loads(line)
            if "add" in action:
                live.add(action["add"]["path"])
            elif "remove" in action:
                live.discard(action["remove"]["path"])
    return len(live)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tunelake", required=True)
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--pipeline")
    ap.add_argument("--work", default="/tmp/tunelake-lifetime")
    a = ap.parse_args()
    tl = os.path.abspath(a.tunelake)
    os.makedirs(a.work, exist_ok=True)
    for old in ("lake", "source.db"):
        subprocess.run(["rm", "-rf", os.path.join(a.work, old)])
    config = ["--config", os.path.abspath(a.pipeline)] if a.pipeline else []
    run([tl, "-q", "seed", "--scale", str(a.scale)], a.work)
    first = run([tl, "-q"] + config + ["run"], a.work)
    print(f"first run {first:.2f} s", flush=True)
    times = []
    for i in range(a.batches):
        batch(os.path.join(a.work, "source.db"), a.streams, a.users)
        times.append(run([tl, "-q"] + config + ["run"], a.work))
        if (i + 1) % 25 == 0:
            print(f"runs {i - 23:4d}-{i + 1:4d}: mean {statistics.mean(times[-25:]) * 1000:7.0f} ms", flush=True)
    files = live_files(a.work)
    early = statistics.mean(times[10:60]) if len(times) >= 60 else float("nan")
    late = statistics.mean(times[-50:]) if len(times) >= 50 else float("nan")
    print(f"runs 11-60 mean {early * 1000:.0f} ms, last 50 mean {late * 1000:.0f} ms, ratio {late / early:.2f}")
    print("live files:", ", ".join(f"{t} {n}" for t, n in files.items()))
    json.dump({"first": first, "times": times, "files": files}, open(os.path.join(a.work, "lifetime.json"), "w"))


if __name__ == "__main__":
    main()
