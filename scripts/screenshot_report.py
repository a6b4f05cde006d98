"""Screenshot an HTML report with headless Chromium (Debian's `chromium` package).

    python scripts/screenshot_report.py report/report.html report/screenshot.png

Exits 3 with a message when no Chromium binary is installed (`apt-get install -y chromium`).
Everything that could reach the network is switched off: the report is self-contained.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


def screenshot(html: str | Path, png: str | Path, width: int = 1400, height: int = 3000, timeout: float = 120) -> Path:
    """Render `html` headless into `png` (width×height pixels); raise with Chromium's stderr on failure."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(BINARIES)}): apt-get install -y chromium")
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdpo-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return png


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        print(f"screenshot: {screenshot(sys.argv[1], sys.argv[2])}")
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
