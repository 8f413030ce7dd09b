"""Check a `slimstep run` report in a headless browser, as a person sees it:
every model of results.json has its table row, every data set its verdict
naming the one-step student with the lowest headline metric (recomputed here
from results.json, not from slimstep's verdict code), every flag of
results.json its badge on that model's row, and every image the page shows
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
  const badges = [...document.querySelectorAll('tr')].filter(tr => tr.cells.length > 1).map(tr =>
    [tr.cells[0].textContent, [...tr.querySelectorAll('.badge')].map(b => b.textContent)]);
  const verdicts = [...document.querySelectorAll('.verdict')].map(d => [d.dataset.spec, d.innerText]);
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({imgs, cells, badges, verdicts});
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
    rows = results["rows"]
    names = [r["name"] for r in rows if not r.get("curve") or r.get("nfe") == 1]
    missing = [n for n in names if n not in found["cells"]]
    broken = [src for src, ok in found["imgs"] if not ok]
    problems = verdict_problems(rows, dict(found["verdicts"])) + badge_problems(rows, found["badges"])
    print(f"{len(names)} models, {len(found['imgs'])} images, {len(found['verdicts'])} verdicts, "
          f"{sum(len(r.get('flags', [])) for r in rows)} flags in {a.run / 'report.html'}")
    if a.screenshot:
        subprocess.run([browser, *flags, "--hide-scrollbars", "--window-size=1300,6000",
                        f"--screenshot={a.screenshot.resolve()}", (a.run / "report.html").resolve().as_uri()],
                       capture_output=True, timeout=120)
    if missing or broken or problems:
        print(f"missing rows: {missing}; images that did not load: {broken}; "
              f"verdicts and flags: {problems or 'fine'}", file=sys.stderr)
        return 1
    print("every model has its row and its badges, every data set its verdict, every image loaded")
    return 0


def verdict_problems(rows: list[dict], verdicts: dict[str, str]) -> list[str]:
    """Each data set's verdict must open with the lowest-metric one-step student."""
    out = []
    for spec in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == spec]
        key = next(k for k in ("fd", "fid", "w2", "mmd") if k in mine[0]["metrics"])
        pool = [r for r in mine if r.get("kind") == "distill" and r.get("nfe") == 1]
        text = verdicts.get(spec)
        if text is None:
            out.append(f"{spec}: no verdict")
        elif pool:
            best = min(pool, key=lambda r: r["metrics"][key])["name"]
            if f"Best one-step model: {best}" not in text:
                out.append(f"{spec}: the verdict does not name {best}")
    return out


def badge_problems(rows: list[dict], badges: list) -> list[str]:
    """Every flag in results.json shows as a badge on its model's row. A teacher's Euler
    curve beyond one step has no table row (it is the NFE plot); its flags are in the
    notes, which the report lists by model name."""
    shown: dict[str, set] = {}
    for name, b in badges:  # a model's name also heads its row in the stage table
        shown.setdefault(name, set()).update(b)
    tabled = [r for r in rows if not r.get("curve") or r.get("nfe") == 1]
    return [f"{r['name']}: no '{f['badge']}' badge" for r in tabled for f in r.get("flags", [])
            if f["badge"] not in shown.get(r["name"], set())]


if __name__ == "__main__":
    sys.exit(main())
