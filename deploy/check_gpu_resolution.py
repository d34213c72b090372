"""Compare a GPU dry-run resolution (pip --report) with constraints-gpu.txt: every pinned
package resolves to its pin and nothing unpinned comes in. Exit 1 with the differences."""

import json
import re
import sys
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(report_path: str, constraints_path: str) -> int:
    report = json.loads(Path(report_path).read_text())
    resolved = {
        canonical(i["metadata"]["name"]): i["metadata"]["version"]
        for i in report["install"]
        if canonical(i["metadata"]["name"]) != "luffy-async"
    }
    pins = {}
    for line in Path(constraints_path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    problems = [
        f"{name}: resolved {version}, pinned {pins.get(name, '(not pinned)')}"
        for name, version in sorted(resolved.items())
        if pins.get(name) != version
    ]
    problems += [f"{name}: pinned but not resolved" for name in sorted(set(pins) - set(resolved))]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"GPU resolution: {len(resolved)} packages, {len(problems)} differences from the pins")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
