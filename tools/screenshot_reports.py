"""Screenshot HTML reports in headless Chromium (Debian: apt-get install chromium), to look at them
as a reader would: `python tools/screenshot_reports.py RUN_OR_STUDY/report.html ... --out shots/`."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 2400) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("pages", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("shots"))
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args()
    for page in args.pages:
        name = "_".join(page.resolve().parts[-2:]).replace(".html", ".png")
        print(screenshot(page, args.out / name, args.width, args.height))


if __name__ == "__main__":
    main()
