# A source's lifetime end to end (issue 29): deletes (detect and apply_as_deletes), a late row with
# lookback, a backfill past the watermark, a refresh, a dimension corrected alone, then gold
# checked against the source.
# Not part of CI. Usage: python3 tests/scenarios/lifetime.py DIR  (env TL=binary, KILL=1 to
# kill -9 every run at a random moment first, SEED=n for that moment).
import json, os, shutil, sqlite3, subprocess, sys, random
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
T = os.environ.get("TL", os.path.expanduser("~/.cache/tunelake/target/debug/tunelake"))
D = sys.argv[1] if len(sys.argv) > 1 else "lifetime-run"
KILL = os.environ.get("KILL")  # kill -9 each run at a random moment first
CHECK_ONLY = os.environ.get("CHECK_ONLY")
if not CHECK_ONLY:
    shutil.rmtree(D, ignore_errors=True); os.makedirs(D)
    shutil.copytree(os.path.join(ROOT, "templates"), D + "/templates")
p = open(os.path.join(ROOT, "pipeline.toml")).read()
p = p.replace('name = "dim_artist"\nscd_type = 2', 'name = "dim_artist"\nscd_type = 2\napply_as_deletes = "is_deleted = 1"\nexcept_columns = ["is_deleted"]')
p = p.replace('keys = ["stream_id"]', 'keys = ["stream_id"]\nlookback = "2h"')
open(D + "/pipeline.toml", "w").write(p)
env = dict(os.environ, TUNELAKE_SOURCE="sqlite:src.db", TUNELAKE_LAKE="lake")
rng = random.Random(int(os.environ.get("SEED", "1")))

def tl(*args, ok=True):
    if KILL and args[0] in ("run", "ingest"):
        proc = subprocess.Popen([T, "-q", *args], cwd=D, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.05, 3.0))
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait(); print("  killed", args)
    r = subprocess.run([T, "-q", *args], cwd=D, env=env, capture_output=True, text=True)
    if ok and r.returncode != 0:
        print(r.stdout, r.stderr); raise SystemExit(f"{args} failed")
    return r

def sql(q):
    r = subprocess.run([T, "sql", "--format", "json", q], cwd=D, env=env, capture_output=True, text=True)
    if r.returncode != 0: raise SystemExit(r.stderr)
    return json.loads(r.stdout) if r.stdout.strip() else []

src = lambda: sqlite3.connect(D + "/src.db")
import time
t0 = time.time()
def step(name):
    global t0
    print(f"  {name}: {time.time() - t0:.1f} s", flush=True); t0 = time.time()
if CHECK_ONLY:
    gone_users, soft, late_id = json.load(open(D + "/deleted.json"))
else:
  tl("seed", "--scale", "0.02", "--seed", "5")
  with src() as c: c.execute("ALTER TABLE DimArtist ADD COLUMN is_deleted INT DEFAULT 0")
  tl("run"); step("run")
  # Hard-delete users, soft-delete artists, a late stream an hour below the watermark.
  with src() as c:
      gone_users = [r[0] for r in c.execute("SELECT user_id FROM DimUser ORDER BY user_id LIMIT 7")]
      c.execute(f"DELETE FROM DimUser WHERE user_id IN ({','.join(map(str, gone_users))})")
      hwm = c.execute("SELECT MAX(updated_at) FROM DimArtist").fetchone()[0]
      soft = [r[0] for r in c.execute("SELECT artist_id FROM DimArtist ORDER BY artist_id LIMIT 4")]
      c.execute(f"UPDATE DimArtist SET is_deleted = 1, updated_at = strftime('%Y-%m-%d %H:%M:%f000', ?, '+1 minute') WHERE artist_id IN ({','.join(map(str, soft))})", [hwm])
      late_at = c.execute("SELECT strftime('%Y-%m-%d %H:%M:%f000', MAX(stream_timestamp), '-1 hour') FROM FactStream").fetchone()[0]
      late_id = c.execute("SELECT MAX(stream_id) + 1 FROM FactStream").fetchone()[0]
      c.execute("INSERT INTO FactStream SELECT ?, user_id, track_id, date_key, 120, 'web', ? FROM FactStream WHERE listen_duration >= 0 LIMIT 1", [late_id, late_at])
  tl("run"); step("run")
  # Backfill past the watermark after new rows.
  tl("seed", "--incremental", "--seed", "5")
  with src() as c:
      inside = c.execute("SELECT stream_timestamp FROM FactStream ORDER BY stream_timestamp DESC LIMIT 1 OFFSET 40").fetchone()[0]
  tl("ingest", "--table", "FactStream", "--from", inside)
  tl("run"); step("run")
  tl("refresh", "--table", "DimTrack", "--yes")
  tl("run"); step("run")
  # A correction of users alone, back-filled as of a past day: its run has no new streams.
  with src() as c:
      day, before = c.execute("SELECT date(MIN(stream_timestamp), '+20 days'), date(MIN(stream_timestamp), '+19 days') FROM FactStream").fetchone()
      c.execute("UPDATE DimUser SET country = 'X' || country, updated_at = ? || ' 00:00:00.000000'", [day])
  tl("ingest", "--table", "DimUser", "--from", before)
  tl("run"); step("run")

  json.dump([gone_users, soft, late_id], open(D + '/deleted.json', 'w'))
# The oracle, from the source as it stands.
with src() as c:
    users = {r[0] for r in c.execute("SELECT user_id FROM DimUser")}
    artists_live = {r[0] for r in c.execute("SELECT artist_id FROM DimArtist WHERE is_deleted = 0")}
    tracks = {r[0] for r in c.execute("SELECT track_id FROM DimTrack")}
    streams = {r[0] for r in c.execute("SELECT stream_id FROM FactStream WHERE listen_duration >= 0")}
    all_streams = c.execute("SELECT COUNT(*) FROM FactStream").fetchone()[0]
problems = []
def check(name, got, want):
    if got != want: problems.append(f"{name}: got {got!r}, want {want!r}")
cur = lambda t, k, sk: {r[k] for r in sql(f"SELECT {k} FROM gold.{t} WHERE is_current AND {sk} > 0")}
check("current users = source users", cur("dim_user", "user_id", "user_sk"), users)
check("current artists = live artists", cur("dim_artist", "artist_id", "artist_sk"), artists_live)
check("current tracks = source tracks", cur("dim_track", "track_id", "track_sk"), tracks)
for u in gone_users:
    rows = sql(f"SELECT valid_to, is_current FROM gold.dim_user WHERE user_id = {u} ORDER BY valid_from")
    if not rows or rows[-1]["valid_to"] is None or any(r["is_current"] for r in rows): problems.append(f"user {u}: {rows}")
for a in soft:
    rows = sql(f"SELECT valid_to, is_current FROM gold.dim_artist WHERE artist_id = {a} ORDER BY valid_from")
    if not rows or rows[-1]["valid_to"] is None or any(r["is_current"] for r in rows): problems.append(f"artist {a}: {rows}")
check("fact streams = source streams", {r["stream_id"] for r in sql("SELECT stream_id FROM gold.fact_stream")}, streams)
check("fact has no duplicate", sql("SELECT count(*) = count(DISTINCT stream_id) AS ok FROM gold.fact_stream")[0]["ok"], True)
# Every source row is in bronze (markers and the refreshed table's archive aside).
bronze = sql("SELECT count(DISTINCT stream_id) AS n FROM silver.streams")[0]["n"]
check("silver streams = source streams", bronze, len(streams))
for t, k, sk in [("dim_user", "user_id", "user_sk"), ("dim_artist", "artist_id", "artist_sk"), ("dim_track", "track_id", "track_sk")]:
    bad = sql(f"""SELECT count(*) AS n FROM gold.{t} a JOIN gold.{t} b ON a.{k} = b.{k} AND a.{sk} < b.{sk}
                 WHERE a.valid_from < coalesce(b.valid_to, TIMESTAMP '2200-01-01') AND b.valid_from < coalesce(a.valid_to, TIMESTAMP '2200-01-01')""")[0]["n"]
    check(f"{t}: no overlapping versions", bad, 0)
    check(f"{t}: at most one current", sql(f"SELECT count(*) AS n FROM (SELECT {k} FROM gold.{t} WHERE is_current GROUP BY {k} HAVING count(*) > 1) x")[0]["n"], 0)
    check(f"{t}: unique sk", sql(f"SELECT count(*) = count(DISTINCT {sk}) AS ok FROM gold.{t}")[0]["ok"], True)
pit = sql("""SELECT count(*) AS n FROM gold.fact_stream f JOIN gold.dim_user u ON f.user_sk = u.user_sk
             WHERE f.user_sk <> -1 AND NOT (u.valid_from <= f.stream_timestamp AND (u.valid_to IS NULL OR f.stream_timestamp < u.valid_to))""")[0]["n"]
check("fact user_sk valid at the stream's time", pit, 0)
miss = sql("""SELECT count(*) AS n FROM gold.fact_stream f WHERE f.user_sk = -1 AND EXISTS (SELECT 1 FROM gold.dim_user u WHERE u.user_id = f.user_id
             AND u.valid_from <= f.stream_timestamp AND (u.valid_to IS NULL OR f.stream_timestamp < u.valid_to))""")[0]["n"]
check("no fact unknown while a version was valid", miss, 0)
check("late stream in gold", len(sql(f"SELECT 1 FROM gold.fact_stream WHERE stream_id = {late_id}")), 1)
# The refreshed ranking (its days reached by new facts, deleted artists and renamed tracks) is
# what its query gives now.
import re
top = open(os.path.join(ROOT, "templates", "top_tracks_per_day.sql.j2")).read()
top = re.sub(r"\{#.*?#\}", "", top, flags=re.S).replace("{{ top_n }}", "10")
differ = sql(f"SELECT count(*) AS n FROM ((SELECT * FROM gold.top_tracks_per_day EXCEPT ({top})) "
             f"UNION ALL (({top}) EXCEPT SELECT * FROM gold.top_tracks_per_day)) d")[0]["n"]
check("top_tracks_per_day = its query", differ, 0)
print("problems:" if problems else "all checks hold", *problems, sep="\n  ")
