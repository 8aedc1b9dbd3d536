"""Peak memory of ``promptbake generate`` as the job grows: it should stay flat.

Requests are planned into the store and streamed back in pages, and answers go to the store as
they arrive, so a job ten times larger should not need ten times the memory. Prints peak RSS per
job size and the ratio to the smallest, measured in the same run. Not a test.

    python bench/memory.py                         # 20,000 and 200,000 requests (~3 minutes)
    python bench/memory.py --sizes 20000,1000000   # the million-request job (~10 minutes)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import fake_server  # noqa: E402

# Each size runs in a fresh interpreter: RUSAGE_CHILDREN keeps the maximum over all children ever
# waited for, so measuring sizes in one process would hide a smaller peak behind a larger one.
# The peak is the largest process's, or the largest sum over generate's processes at one time
# (rss.py: over 50,000 cells a helper process plans the grid's slices), whichever is larger.
ONE_SIZE = "import sys; sys.path.insert(0, {here!r}); from throughput import promptbake_generate; " \
           "from rss import TreePeak; peak = TreePeak().start(); " \
           "sustained, overall, largest = promptbake_generate({url!r}, {n}, {concurrency}); " \
           "print(sustained, overall, largest, peak.stop())"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    baseline = None
    with fake_server() as url:
        for n in (int(s) for s in args.sizes.split(",")):
            start = time.perf_counter()
            code = ONE_SIZE.format(here=str(HERE), url=url, n=n, concurrency=args.concurrency)
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            sustained, overall, largest, together = (float(x) for x in out.stdout.split())
            peak = max(largest, together)
            baseline = baseline or peak
            print(f"{n:>9,} requests: peak RSS {peak:6,.0f} MB ({peak / baseline:.2f}× the first size; the "
                  f"largest process {largest:,.0f} MB, its processes together {together:,.0f} MB), "
                  f"{sustained:,.0f} req/s sustained, {overall:,.0f} req/s overall, "
                  f"{time.perf_counter() - start:,.0f} s")


if __name__ == "__main__":
    main()
