"""What a browser test reads off the page: console state, canvas pixels, screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"

CANVAS_STATS = """
const canvas = (arguments[0] || document).querySelector('.console-screen canvas');
if (!canvas || !canvas.width || !canvas.height) return {width: 0, height: 0, colours: 0, lit: 0};
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const colours = new Set();
let lit = 0, seen = 0;
for (let i = 0; i < data.length; i += 4 * 7) {
  const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
  colours.add(rgb);
  if (rgb !== 0) lit++;
  seen++;
}
return {width: canvas.width, height: canvas.height, colours: colours.size, lit: lit / seen};
"""


def console_state(driver) -> str | None:
    """data-state of the console on the page: connecting, connected, disconnected, unavailable."""
    return driver.execute_script(
        "const s = document.querySelector('.console-status'); return s && s.dataset.state;"
    )


def canvas_stats(driver) -> dict:
    """Size of the console canvas, distinct colours and the share of non-black pixels
    (sampled)."""
    return driver.execute_script(CANVAS_STATS)


def save_screenshot(driver, name: str, folder: Path) -> Path:
    """Save a PNG in `folder`; also in docs/img/ when RUDDERVIRT_DOC_SCREENSHOTS=1 (how the
    screenshots in the docs are refreshed)."""
    path = folder / name
    assert driver.save_screenshot(str(path)), "the browser took no screenshot"
    if os.environ.get("RUDDERVIRT_DOC_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / name)
    return path


def diagnosis(driver, portal=None) -> str:
    """What to print when a browser test fails: the status line, the browser's console
    log and the portal's log."""
    parts = []
    try:
        status = driver.execute_script(
            "const s = document.querySelector('.console-status');"
            "return s ? s.textContent : '(none)';"
        )
        parts.append(f"status: {status}")
        parts.append("url: " + driver.current_url)
        parts += [f"browser: {e['level']} {e['message']}" for e in driver.get_log("browser")]
    except Exception as exc:  # a dead browser must not hide the real failure
        parts.append(f"(browser unavailable: {exc})")
    if portal is not None:
        parts.append("portal log:\n" + portal.log_tail())
    return "\n".join(parts)
