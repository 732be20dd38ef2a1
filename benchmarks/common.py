"""What every benchmark script shares: the CPU's name for the report, and writing the JSON result
(stdout and benchmarks/results/NAME.json). Scripts run as `python benchmarks/X.py`, so this
module is imported as `common`."""

from __future__ import annotations

import json
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(name: str, result: dict) -> Path:
    """Print `result` as JSON and write it to benchmarks/results/`name`.json."""
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(text + "\n")
    return out
