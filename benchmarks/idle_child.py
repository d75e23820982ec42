"""The end-to-end floor: a multilang child that does nothing with its records.

The daemon runs it instead of ``python -m record_processor``. It answers every action with its
status (no checkpoint, no decoding, no store) and appends, per ``processRecords``, one line per
record: the sequence number and the wall-clock time the line was read, to the file named by
its argument, so the benchmark can tell when each record reached a child.

    executableName = /path/to/python /path/to/benchmarks/idle_child.py /path/to/arrivals.tsv
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    inp, out = sys.stdin, sys.stdout
    with open(sys.argv[1], "a", encoding="utf-8") as arrivals:
        while True:
            line = inp.readline()
            if not line:
                return
            if not line.strip():
                continue
            received = time.time()
            message = json.loads(line)
            action = message.get("action")
            if action == "processRecords":
                arrivals.write("".join(f"{r['sequenceNumber']}\t{received:.6f}\n" for r in message["records"]))
                arrivals.flush()
            out.write("\n" + json.dumps({"action": "status", "responseFor": action}) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
