#!/usr/bin/env python3
"""Kernel launches per RFA step from two cubecl profiling logs of the same benchmark, one run
with one more step than the other (scripts/count-launches.sh): the difference is one step's
launches. Prints one JSON object: the total and the count per kernel kind (the last step's).

usage: count_launches.py SHORT.profile.log LONG.profile.log
"""
import collections
import json
import re
import sys

LINE = re.compile(r"^\| [\d.]+(?:ns|µs|ms|s) *\| (.*)$")


def kernels(path):
    """Kernel names in launch order (cubecl's profiling logger, level `basic` or `full`)."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip())
            if m:
                name = m.group(1)
                # level `full`: `path::Kernel<path::Op, Runtime>: Info {`; `basic`: `Kernel | … | Runtime`
                head = name.split("<")[0].split("|")[0].strip().rsplit("::", 1)[-1]
                op = re.search(r"binary::(\w+)Op", name)
                out.append(head + ("." + op.group(1) if op else ""))
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    short, long = kernels(sys.argv[1]), kernels(sys.argv[2])
    n = len(long) - len(short)
    if n <= 0:
        sys.exit(f"the second log has {len(long)} launches, the first {len(short)}: run the second with one more step")
    kinds = collections.Counter(long[-n:])
    print(json.dumps({"launches_per_step": n, "by_kind": dict(kinds.most_common())}))


if __name__ == "__main__":
    main()
