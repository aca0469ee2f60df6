"""Side-by-side Ir per request by function (self or inclusive) from two callgrind dumps.
usage: cgcompare.py <dumpA> <requestsA> <dumpB> <requestsB> [--inclusive] [N]"""

import re
import subprocess
import sys
from collections import defaultdict


def load(path, inclusive):
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", path],
        capture_output=True,
        text=True,
    ).stdout
    costs = defaultdict(int)
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S.*?)(?: \[(.*)\])?$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2).split(":", 1)[-1]  # drop the source file
        name = re.sub(r"'\d+$", "", name)  # merge recursion levels
        costs[name] += int(m.group(1).replace(",", ""))
    return costs


a, na, b, nb = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
inclusive = "--inclusive" in sys.argv
top = int(sys.argv[-1]) if sys.argv[-1].isdigit() and len(sys.argv) > 5 else 30
ca, cb = load(a, inclusive), load(b, inclusive)
rows = sorted(set(ca) | set(cb), key=lambda k: -max(ca.get(k, 0) / na, cb.get(k, 0) / nb))[:top]
print(f"{'Ir/request':>10} {'A':>9} {'B':>9} {'A-B':>8}  function")
for k in rows:
    x, y = ca.get(k, 0) / na, cb.get(k, 0) / nb
    print(f"{'':>10} {x:9.0f} {y:9.0f} {x - y:8.0f}  {k[:110]}")
print(
    f"{'total':>10} {sum(ca.values()) / na if not inclusive else 0:9.0f} {sum(cb.values()) / nb if not inclusive else 0:9.0f}"
)
