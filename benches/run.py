#!/usr/bin/env python3
"""tunelake against the peers, in one invocation, alternating, full then incremental.

Called by benches/run.sh (which sets up the peers' venv and builds tunelake). Per scale:
generate data/sf<S> with the peers' generator if missing; then, for each repetition and each
contender in turn: a full run (batch 1) and an incremental run (batch 2 added), each one
process under `/usr/bin/time -v`. tunelake reads the generated parquet through its files:
source with benches/peers/pipeline.toml; its source folder gets part-00002 for the
incremental run, as the peers' incremental run reads batch 2.

Reports median wall seconds, CPU seconds (user+sys) and peak RSS per contender and step, and
tunelake / best peer, into benches/README.md (replacing the table of that scale).
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
TABLES = ["DimUser", "DimArtist", "DimTrack", "DimDate", "FactStream"]


def timed(cmd, cwd, log):
    """Runs cmd under /usr/bin/time -v; returns wall s, cpu s, peak RSS MB."""
    tv = log + ".time"
    with open(log, "w") as out:
        p = subprocess.run(["/usr/bin/time", "-v", "-o", tv] + cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    text = open(tv).read()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}); see {log}")
    m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    wall = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    return {"wall_s": round(wall, 2), "cpu_s": round(user + sys_, 2), "rss_mb": round(rss)}


def tunelake_source(data, work, batches):
    """A files: source folder holding the generated parts of the given batches."""
    src = os.path.join(work, "source")
    for t in TABLES:
        os.makedirs(os.path.join(src, t), exist_ok=True)
        for b in batches:
            part = os.path.join(data, "source", t, f"part-{b:05d}.parquet")
            link = os.path.join(src, t, os.path.basename(part))
            if os.path.exists(part) and not os.path.exists(link):
                os.symlink(part, link)
    return src


def run_tunelake(binary, data, work, step, log):
    if step == "full":
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    src = tunelake_source(data, work, [1] if step == "full" else [1, 2])
    cmd = [binary, "--quiet", "--config", os.path.join(HERE, "peers", "pipeline.toml"),
           "--source", f"files:{src}", "--lake", os.path.join(work, "lake"), "run"]
    return timed(cmd, work, log)


def run_peer(py, peers_dir, peer, data, out, step, log):
    script = os.path.join(peers_dir, f"peer_{peer}.py")
    return timed([py, script, "--data", data, "--out", out, "--mode", step], peers_dir, log)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-dir", required=True)
    ap.add_argument("--tunelake", required=True)
    ap.add_argument("--scale", type=float, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42,
                    help="gen_data.py's seed; the harness that checks us uses another one")
    ap.add_argument("--peers", nargs="+", default=["duckdb", "polars_delta", "pyspark"])
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    a = ap.parse_args()
    py = os.path.join(a.peers_dir, "venv", "bin", "python")
    # Data and outputs of another seed live beside the default's, so neither is regenerated.
    sf = f"sf{a.scale:g}" + ("" if a.seed == 42 else f"-seed{a.seed}")
    data = os.path.join(a.work, "data", sf)
    os.makedirs(os.path.join(a.work, "logs"), exist_ok=True)
    if not os.path.exists(os.path.join(data, "manifest.json")):
        subprocess.run([py, os.path.join(a.peers_dir, "gen_data.py"), "--scale", str(a.scale),
                        "--seed", str(a.seed), "--out", data],
                       check=True)
    contenders = ["tunelake"] + a.peers
    results = {c: {"full": [], "incremental": []} for c in contenders}
    for rep in range(1, a.reps + 1):
        for c in contenders:
            for step in ("full", "incremental"):
                log = os.path.join(a.work, "logs", f"{sf}-{c}-{step}-{rep}.log")
                if c == "tunelake":
                    r = run_tunelake(a.tunelake, data, os.path.join(a.work, "out", "tunelake", sf), step, log)
                else:
                    r = run_peer(py, a.peers_dir, c, data, os.path.join(a.work, "out", c, sf), step, log)
                results[c][step].append(r)
                print(f"rep {rep} {c:<13} {step:<11} {r['wall_s']:>7.2f} s wall {r['cpu_s']:>7.2f} s cpu "
                      f"{r['rss_mb']:>6} MB", flush=True)
    med = {c: {s: {k: statistics.median(x[k] for x in v) for k in ("wall_s", "cpu_s", "rss_mb")}
               for s, v in steps.items()} for c, steps in results.items()}
    lines = [f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, scale {a.scale:g}, seed {a.seed}, "
             f"{a.reps} repetitions",
             "", f"Machine: {platform.machine()}, {os.cpu_count()} CPUs reported, {platform.platform()}. "
             f"Command: `benches/run.sh --scale {a.scale:g} --seed {a.seed} --reps {a.reps} "
             f"--peers {' '.join(a.peers)}`.", "",
             "| contender | full wall s | full CPU s | full peak RSS MB | incr. wall s | incr. CPU s | incr. peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in contenders:
        f, i = med[c]["full"], med[c]["incremental"]
        lines.append(f"| {c} | {f['wall_s']:.2f} | {f['cpu_s']:.2f} | {f['rss_mb']:.0f} | "
                     f"{i['wall_s']:.2f} | {i['cpu_s']:.2f} | {i['rss_mb']:.0f} |")
    for step in ("full", "incremental"):
        best = min(a.peers, key=lambda p: med[p][step]["wall_s"])
        ratio = med["tunelake"][step]["wall_s"] / med[best][step]["wall_s"]
        lines.append(f"\n{step}: tunelake / fastest peer ({best}) = {ratio:.2f} (wall, medians)")
    if "pyspark" in a.peers:
        lines.append("\npyspark: CPU and RSS are the Python driver's only (`time -v` does not see the JVM it "
                     "starts); shared/peers/bench.py samples the process tree for those.")
    # The outputs left are those of the last incremental run: check that they agree.
    check = subprocess.run(
        [py, os.path.join(HERE, "verify.py"), "--tunelake", os.path.join(a.work, "out", "tunelake", sf, "lake")]
        + [os.path.join(a.work, "out", p, sf) for p in a.peers],
        capture_output=True, text=True)
    lines += ["", "Digests after the incremental run (`benches/verify.py`):", "", "```",
              (check.stdout + check.stderr).strip(), "```"]
    text = "\n".join(lines) + "\n\n"
    print(text)
    record(os.path.join(HERE, "README.md"), f"{a.scale:g}", text)
    with open(os.path.join(a.work, f"results-{sf}.json"), "w") as f:
        json.dump(results, f, indent=1)


def record(readme, scale, text):
    """Puts `text` as the table of `scale` in the README, between its markers (added at the end
    when the scale has none yet)."""
    start, end = f"<!-- scale {scale} -->", f"<!-- /scale {scale} -->"
    title, rest = text.strip().split("\n", 1)
    body = f"### Scale {scale} ({title.removeprefix('## ')})\n{rest}"
    doc = open(readme).read()
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + f"{start}\n{body}\n{end}" + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n{start}\n{body}\n{end}\n"
    with open(readme, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
