"""Open an analysis `report.html` in headless Chromium and check that it rendered.

    python scripts/check_report_render.py OUT/report.html [--screenshot shot.png] [--chromium PATH]

Loads the file from disk (file://, no server), lets its script run, dumps the DOM and checks:
the script ran (body data-ready="1"), the summary, plots and latents sections exist, every
image is an embedded PNG, the card counter matches the number of cards, and every
extension section of report_sections/ is present. Prints one JSON object; exit status 1 if
a check fails, 2 if Chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class DomSummary(HTMLParser):
    """What the checks need from the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.section_ids: list[str] = []
        self.extension_sources: list[str] = []
        self.images: list[str] = []
        self.cards = 0
        self.hidden_cards = 0
        self.card_classes: set[str] = set()
        self.count_text = ""
        self._in_count = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body" and a.get("data-ready") == "1":
            self.ready = True
        if tag == "section" and a.get("id"):
            self.section_ids.append(a["id"] or "")
            if "extension" in (a.get("class") or "").split():
                self.extension_sources.append(a.get("data-source") or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "article" and "card" in (a.get("class") or "").split():
            self.cards += 1
            self.hidden_cards += "hidden" in a
            self.card_classes.add(a.get("data-class") or "")
        if tag == "span" and a.get("id") == "card-count":
            self._in_count = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_count = False

    def handle_data(self, data: str) -> None:
        if self._in_count:
            self.count_text += data


def dump_dom(report: Path, chromium: str, timeout: float = 120.0) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
           "--dump-dom", report.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-500:]}")
    return done.stdout


def screenshot(report: Path, chromium: str, out: Path, timeout: float = 120.0) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
           "--window-size=1300,2400", f"--screenshot={out.resolve()}", report.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=timeout, check=True)


def check_report(report: Path, chromium: str) -> dict[str, Any]:
    dom = DomSummary()
    dom.feed(dump_dom(report, chromium))
    expected_fragments = sorted(p.name for p in (report.parent / "report_sections").glob("*.html"))
    checks = {
        "script_ran": dom.ready,
        "core_sections": all(s in dom.section_ids for s in ("summary", "plots", "latents")),
        "images_embedded": bool(dom.images) and all(src.startswith("data:image/png;base64,") for src in dom.images),
        "cards_counted": dom.cards > 0 and dom.count_text.strip() == f"{dom.cards - dom.hidden_cards} of {dom.cards} latents shown",
        "extensions_in_order": dom.extension_sources == expected_fragments,
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "sections": dom.section_ids,
        "n_images": len(dom.images),
        "n_cards": dom.cards,
        "card_classes": sorted(dom.card_classes),
        "count_text": dom.count_text.strip(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--chromium", default=None)
    args = parser.parse_args()
    chromium = args.chromium or find_chromium()
    if chromium is None:
        print(json.dumps({"ok": False, "error": "chromium not found; apt-get install chromium"}))
        return 2
    result = check_report(args.report, chromium)
    if args.screenshot is not None:
        screenshot(args.report, chromium, args.screenshot)
        result["screenshot"] = str(args.screenshot)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
