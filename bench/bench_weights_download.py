"""Weights install vs TotalSegmentator's own download, side by side, over a loopback HTTP server.

Both fetch the same TotalSegmentator-layout release zip (a checkpoint of random bytes: weights do not
compress) from the same local server, each in a child process of its own (peak memory = its VmHWM; ru_maxrss
would count the forked parent):

* peer: ``totalsegmentator.libs.download_url_and_unpack`` (requests, then ``extractall``), what
  ``totalseg_download_weights`` runs;
* ours: ``aiportal.weights.install`` (download, size + sha256 check, checked unpack into staging,
  rename, sha256 of every installed file into the receipt).

Then the same transfer broken off at half way: ours resumes (bytes sent counted by the server), the
peer has no resume and starts again. Usage: ``python bench/bench_weights_download.py [--mb 256]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "Testing"))

from weights_server import FileServer  # noqa: E402

DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"

PEER = """
def hwm():
    return [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
import sys, time
from pathlib import Path
from totalsegmentator.libs import download_url_and_unpack
before = hwm()
start = time.perf_counter()
download_url_and_unpack(sys.argv[1], Path(sys.argv[2]))
print(time.perf_counter() - start, hwm(), before)
"""

OURS = """
def hwm():
    return [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
import json, sys, time
from aiportal.weights.download import Transfer
from aiportal.weights.install import install
from aiportal.weights.manifest import from_json
weights = from_json("totalseg-total-fast", json.loads(sys.argv[1]))
before = hwm()
start = time.perf_counter()
install(weights, transfer=Transfer(retries=int(sys.argv[2])))
print(time.perf_counter() - start, hwm(), before)
"""


def release_zip(megabytes: int) -> bytes:
    buffer = io.BytesIO()
    model = f"{DATASET}/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{model}/dataset.json", json.dumps({"labels": {"background": 0}}))
        archive.writestr(f"{model}/plans.json", json.dumps({"configurations": {}}))
        archive.writestr(f"{model}/fold_0/checkpoint_final.pth", os.urandom(megabytes << 20))
    return buffer.getvalue()


def child(code: str, *args: str, env: dict) -> tuple[float, float, float]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    seconds, peak_kb, imports_kb = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(peak_kb) / 1024, int(imports_kb) / 1024  # peak, and peak after the imports alone


def sent_bytes(server: FileServer, size: int) -> int:
    """Bytes the server put on the wire: a cut transfer sends cut_fraction of what was asked."""
    total = 0
    for index, request in enumerate(server.behaviour.requests):
        start = int(request["headers"].get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
        total += int((size - start) * (0.5 if index == 0 else 1.0))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="checkpoint size in MB")
    args = parser.parse_args()
    body = release_zip(args.mb)
    digest = hashlib.sha256(body).hexdigest()
    print(f"release zip: {len(body) / 1e6:.1f} MB ({DATASET}, random checkpoint)")
    with tempfile.TemporaryDirectory(dir=REPO.parent) as work_name, FileServer({"/w.zip": body}) as server:
        work = Path(work_name)
        url = server.url("/w.zip")
        manifest = json.dumps({"version": "bench", "license": "Apache-2.0", "artifacts": [
            {"name": "w.zip", "url": url, "sha256": digest, "size": len(body), "layout": "totalseg-zip"}]})
        rows = []
        for run in range(6):  # the first run warms the page cache; the median of the other five is reported
            env = {**os.environ, "PYTHONPATH": str(REPO), "AIPORTAL_WEIGHTS_DIR": str(work / f"w{run}"),
                   "TOTALSEG_HOME_DIR": str(work / f"ts{run}")}
            (work / f"peer{run}").mkdir()
            # each starts with the disk's dirty pages written (os.sync), and the order alternates: the
            # one run second would otherwise pay for the first one's write-back
            order = ["peer", "ours"] if run % 2 else ["ours", "peer"]
            timings = {}
            for name in order:
                os.sync()
                timings[name] = (child(PEER, url, str(work / f"peer{run}"), env=env) if name == "peer"
                                 else child(OURS, manifest, "0", env=env))
            rows.append((timings["peer"], timings["ours"]))
        rows = sorted(rows[1:], key=lambda row: row[0][0] + row[1][0])
        (peer_s, peer_mb, peer_base), (ours_s, ours_mb, ours_base) = rows[2]  # the median pair of runs
        print("runs (peer s, ours s): " + ", ".join(f"({p[0]:.2f}, {o[0]:.2f})" for p, o in rows))
        print(f"{'':<34}{'seconds':>9}{'peak MB':>9}{'of it imports':>15}")
        print(f"{'peer download_url_and_unpack':<34}{peer_s:>9.2f}{peer_mb:>9.0f}{peer_base:>15.0f}")
        print(f"{'ours install (checked, staged)':<34}{ours_s:>9.2f}{ours_mb:>9.0f}{ours_base:>15.0f}")
        print(f"ratio ours/peer: time {ours_s / peer_s:.2f}x, peak memory {ours_mb / peer_mb:.2f}x "
              f"(above the imports: {max(ours_mb - ours_base, 1) / max(peer_mb - peer_base, 1):.2f}x)")

        server.behaviour.requests.clear()
        server.behaviour.cut_first, server.behaviour.cut_fraction = 1, 0.5
        env = {**os.environ, "PYTHONPATH": str(REPO), "AIPORTAL_WEIGHTS_DIR": str(work / "cut"),
               "TOTALSEG_HOME_DIR": str(work / "tscut")}
        resumed_s, _, _ = child(OURS, manifest, "3", env=env)
        ours_sent = sent_bytes(server, len(body))
        print(f"broken off at 50 %: ours resumed and sent {ours_sent / len(body):.2f}x the file in {resumed_s:.2f} s; "
              f"the peer has no resume: it fails and a rerun sends 1.50x")


if __name__ == "__main__":
    main()
