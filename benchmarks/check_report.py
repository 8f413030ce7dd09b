"""Check a `slimstep run` report in a headless browser: every model of
results.json has its table row in the rendered page and every image it shows
loaded (Chromium draws it with a non-zero natural width).

    python benchmarks/check_report.py runs/demo [--screenshot shot.png]

Needs Chromium (Debian: apt-get install chromium). Exits 1 naming what is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the page after load: writes what it found into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);
  const cells = [...document.querySelectorAll('td:first-child')].map(td => td.textContent);
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({imgs, cells});
  document.body.appendChild(pre);
});
</script>"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run directory (report.html + results.json)")
    ap.add_argument("--screenshot", type=Path, help="also save a full-page screenshot here")
    a = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("check_report: no chromium on PATH", file=sys.stderr)
        return 2
    page = (a.run / "report.html").read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=a.run, delete=False) as f:
        f.write(page.replace("</body>", PROBE + "</body>"))
        probe_page = Path(f.name)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    try:
        dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom",
                              probe_page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    finally:
        probe_page.unlink()
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    if not m:
        print("check_report: the page did not finish loading in the browser", file=sys.stderr)
        return 1
    found = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                       .replace("&gt;", ">"))
    results = json.loads((a.run / "results.json").read_text())
    names = [r["name"] for r in results["rows"] if not r.get("curve") or r.get("nfe") == 1]
    missing = [n for n in names if n not in found["cells"]]
    broken = [src for src, ok in found["imgs"] if not ok]
    print(f"{len(names)} models, {len(found['imgs'])} images in {a.run / 'report.html'}")
    if a.screenshot:
        subprocess.run([browser, *flags, "--hide-scrollbars", "--window-size=1300,6000",
                        f"--screenshot={a.screenshot.resolve()}", (a.run / "report.html").resolve().as_uri()],
                       capture_output=True, timeout=120)
    if missing or broken:
        print(f"missing rows: {missing}; images that did not load: {broken}", file=sys.stderr)
        return 1
    print("every model has its row and every image loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
