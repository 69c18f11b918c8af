"""Screenshot a viewer page with headless Chromium (for the README).

    python -m sparseformer.report.screenshot RUN/circuits/single_double_quote.html docs/viewer.png

Needs a Chromium binary (Debian: `apt-get install -y chromium`); pass --chromium to name another.
Network, sync, extensions and first-run features are off, so the page is rendered from the file alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..checkpoint import atomic_write_bytes

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(name: str | None = None) -> str:
    for cand in ([name] if name else CANDIDATES):
        path = shutil.which(cand)
        if path:
            return path
    raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install -y chromium) or pass --chromium")


def screenshot(html_path: str | Path, png_path: str | Path, *, width: int = 1400, height: int = 900,
               chromium: str | None = None, timeout_s: float = 120) -> Path:
    """Render `html_path` at width x height and save a PNG to `png_path` (written via a temp file)."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path)
    if not html_path.is_file():
        raise FileNotFoundError(f"{html_path} does not exist")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        tmp_png = Path(profile) / "shot.png"
        cmd = [find_chromium(chromium), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--screenshot={tmp_png}", f"--window-size={width},{height}", html_path.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if not tmp_png.is_file():
            raise RuntimeError(f"chromium made no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        atomic_write_bytes(png_path, tmp_png.read_bytes())
    return png_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--chromium", default=None)
    args = ap.parse_args(argv)
    try:
        out = screenshot(args.html, args.png, width=args.width, height=args.height, chromium=args.chromium)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
