"""Looking at a report: headless Chromium loads report.html, measures its layout, or takes a screenshot."""

from __future__ import annotations

from typing import Any

from raypriv.errors import RayprivError

_BROWSER_CHECK = """
<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const images = [...document.images].map((img) => ({
    alt: img.alt.slice(0, 60), loaded: img.complete && img.naturalWidth > 0,
    right: img.getBoundingClientRect().right, shown: img.getBoundingClientRect().width,
  }));
  const overflowing = [];
  for (const el of document.querySelectorAll("main *")) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 0.5 && !el.closest(".scroll")) {
      overflowing.push(el.tagName + (el.className ? "." + el.className : ""));
    }
  }
  const scrolled = [...document.querySelectorAll(".scroll")]
    .filter((el) => el.scrollWidth > el.clientWidth + 1)
    .map((el) => (el.querySelector("th") || {}).textContent || "table");
  const boxes = [...document.querySelectorAll("main img, main table, main .verdicts li")]
    .map((el) => [el.tagName, el.getBoundingClientRect()]);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, b] = [boxes[i][1], boxes[j][1]];
    if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) {
      overlaps.push(boxes[i][0] + "/" + boxes[j][0]);
    }
  }
  const out = document.createElement("pre");
  out.id = "raypriv-browser-check";
  out.textContent = JSON.stringify({width, pageWidth: document.documentElement.scrollWidth, images,
                                    overflowing, scrolled, overlaps});
  document.body.appendChild(out);
});
</script>
"""


def find_chromium() -> str | None:
    """A Chromium or Chrome binary on PATH, or None."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_check(html_path: str, chromium: str | None = None, width: int = 1280, timeout: float = 60.0) -> dict[str, Any]:
    """Load a report in headless Chromium and measure its layout.

    A copy of the page with a small script (the report itself has none) is
    loaded at ``width`` pixels; the script records, after every image has
    loaded, whether each ``<img>`` decoded (``naturalWidth > 0``), which
    elements reach past the page's right edge (tables inside their
    scrolling box excepted), which tables need scrolling, and which images,
    tables or verdicts overlap.  Chromium's ``--dump-dom`` returns it.
    """
    import json
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RayprivError("no Chromium found (chromium, chromium-browser, google-chrome); install Debian's `chromium` package")
    page = Path(html_path).read_text()
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.html"
        probe.write_text(page.replace("</body>", _BROWSER_CHECK + "</body>"))
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={folder}/profile", f"--window-size={width},1000", "--virtual-time-budget=10000",
            "--dump-dom", probe.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<pre id="raypriv-browser-check">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise RayprivError(f"Chromium did not run the layout check (exit {done.returncode}): {done.stderr[-500:]}")
    from html import unescape

    return json.loads(unescape(found.group(1)))


def screenshot(
    html_path: str, png_path: str, chromium: str | None = None, width: int = 1280, height: int = 4000, timeout: float = 60.0
) -> None:
    """Render a report to a PNG with headless Chromium (for looking at it, and for the README)."""
    import subprocess
    import tempfile
    from pathlib import Path

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RayprivError("no Chromium found (chromium, chromium-browser, google-chrome); install Debian's `chromium` package")
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={folder}/profile", f"--window-size={width},{height}",
             f"--screenshot={Path(png_path).absolute()}", Path(html_path).absolute().as_uri()],
            capture_output=True, timeout=timeout, check=True,
        )
