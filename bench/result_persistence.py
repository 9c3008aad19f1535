"""Peak memory of persisting a large result the way train-two-stage does: Prefect's default
`PickleSerializer` (the whole pickle in memory, then its base64 text) against `tasks/caching.StreamedPickle`
(pickled straight into a file). The object stands in for a trained model: dense arrays and CSR matrices of
`--gib` GiB in all. Each serializer runs in a fresh process; the extra peak is the process's peak RSS
after `dumps` minus its peak before it.

    python bench/result_persistence.py --gib 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, os, resource, sys
sys.path.insert(0, {root!r})
import numpy as np, scipy.sparse as sp

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

n = int({gib} * 2 ** 30 / 8 / 4)  # four parts of n float64 values (or value + index bytes)
rng = np.random.default_rng(0)
model = {{"factors": rng.random(n), "scores": rng.random(n).astype(np.float32),
          "state": sp.random(max(1, n // 1000), 1000, density=0.5, format="csr", random_state=1,
                             dtype=np.float64), "ids": np.arange(n, dtype=np.int64)}}
before = peak()
from prefect.serializers import PickleSerializer
from recsys.tasks.caching import StreamedPickle
serializer = StreamedPickle() if {streamed} else PickleSerializer()
blob = serializer.dumps(model)
print(json.dumps({{"before_gib": before, "after_gib": peak(), "record_bytes": len(blob)}}))
"""


def run(gib: float, streamed: bool, home: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT), gib=gib, streamed=streamed)],
                          capture_output=True, text=True, env={**__import__("os").environ, "RECSYS_HOME": str(home)})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=2.0, help="size of the stand-in model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="persist-bench-") as home:
        rows = {name: run(args.gib, name == "streamed", Path(home)) for name in ("prefect pickle", "streamed")}
    print(f"{'serializer':<16}{'peak before GiB':>16}{'peak after GiB':>15}{'extra GiB':>11}{'record bytes':>14}")
    for name, r in rows.items():
        print(f"{name:<16}{r['before_gib']:>16.2f}{r['after_gib']:>15.2f}{r['after_gib'] - r['before_gib']:>11.2f}"
              f"{r['record_bytes']:>14,}")
    base = rows["prefect pickle"]["after_gib"]
    print(f"peak with the streamed result / with Prefect's pickle: {rows['streamed']['after_gib'] / base:.2f}")


if __name__ == "__main__":
    main()
