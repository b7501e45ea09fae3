"""Drive the MLflow UI (MLflow 3.x React app) in a headless Debian Chromium with Playwright.

    text = compare_runs_in_ui("http://127.0.0.1:5000", "alignflow", ["exp-dpo · dpo", "exp-ppo · ppo"],
                              Path("reports/ci/mlflow-compare.png"))
    assert "eval.winrate_judge_vs_sft" in text

What it does is what a user does: open the experiment's runs table, tick the runs' checkboxes,
click "Compare", read the compare page. Two steps take a shortcut, both robustness measures:
- the experiment's runs table is opened by URL (`#/experiments/<id>/runs`): an experiment's
  default page in MLflow 3.x depends on its kind (GenAI experiments land on "Overview"), the
  runs table URL does not;
- the table is first narrowed to the wanted runs by typing `attributes.run_id IN (...)` into its
  search box (MLflow's search accepts IN only for run ids, not run names): in an experiment
  with hundreds of runs the table pages (100 per load), so a run may not be on screen. Child
  runs (the pipeline's stage runs) stay folded under their parent's row even then: the helper
  unfolds the parent rows (the expander in their run-name cell) of the runs not shown. The
  rows are still found by their run name and selected with their checkbox.
Runs are resolved name -> id through the tracking API first, so a missing or ambiguous name
fails with a clear message instead of a selector timeout. The compare page's Metrics table is
virtualized (300 px, only the rows on screen exist in the DOM): the helper scrolls it through
and appends every row to the text it returns, so a caller can assert any metric of runs that
log dozens of them.

Chromium is Debian's (`apt-get install chromium`, /usr/bin/chromium); Playwright's own browser
downloads are never used. Every wait is bounded (`timeout_ms`); on failure a screenshot and the
page's HTML land beside the requested screenshot (`<name>.failure.png` / `.failure.html`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

CHROMIUM = Path(os.environ.get("ALIGNFLOW_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking/component/sync flags Chromium dials Google services at
# start-up; in a closed network those connections are refused and slow everything down.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
MAX_SCREENSHOT_HEIGHT = 12_000  # px: a full-page screenshot of a very long compare page is capped


def browser_missing() -> str | None:
    """Why no browser scenario can run here (a skip reason), or None when one can."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM} (Debian: `apt-get install chromium`; "
                "ALIGNFLOW_CHROMIUM points elsewhere)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def chromium_page(timeout_ms: int = 30_000, viewport: dict | None = None) -> Iterator:
    """A fresh headless Chromium page (own profile, UTC, en-US); closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                                     timeout=max(timeout_ms, 60_000))
        try:
            context = browser.new_context(viewport=viewport or VIEWPORT, locale="en-US", timezone_id="UTC")
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            page.set_default_navigation_timeout(max(timeout_ms, 60_000))
            yield page
        finally:
            browser.close()


def resolve_runs(tracking_uri: str, experiment_name: str, run_names: Sequence[str]) -> tuple[str, dict[str, str]]:
    """(experiment id, {run name: run id}); each name must name exactly one active run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise LookupError(f"no experiment {experiment_name!r} on {tracking_uri}")
    ids: dict[str, str] = {}
    for name in run_names:
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{escaped}'", max_results=10)
        if len(runs) != 1:
            found = [r.info.run_id for r in runs]
            raise LookupError(f"run name {name!r} matches {len(runs)} runs in experiment {experiment_name!r} "
                              f"({found}); the UI scenario needs unique run names")
        ids[name] = runs[0].info.run_id
    if len(set(ids.values())) != len(run_names):
        raise ValueError(f"duplicate run names in {list(run_names)}")
    return experiment.experiment_id, ids


def run_ancestors(tracking_uri: str, run_ids: Sequence[str]) -> dict[str, list[str]]:
    """{run id: [parent id, grandparent id, ...]} from the mlflow.parentRunId tags."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parents: dict[str, str | None] = {}

    def parent(run_id: str) -> str | None:
        if run_id not in parents:
            parents[run_id] = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        return parents[run_id]

    chains = {}
    for run_id in run_ids:
        chain, current = [], parent(run_id)
        while current and current not in chain and len(chain) < 16:
            chain.append(current)
            current = parent(current)
        chains[run_id] = chain
    return chains


def runs_table_url(tracking_uri: str, experiment_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs"


def compare_url(tracking_uri: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The compare page's deep link, as the UI itself builds it."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="[],")
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")), safe="[],")
    return f"{tracking_uri.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


_ROW_IDS = """() => [...document.querySelectorAll('[role="row"][row-id]')]
    .map(r => r.getAttribute('row-id'))"""
_FOOTER_COUNT_IN = """([low, high]) => {  // the table footer: "<strong>N</strong> matching runs"
    const footer = [...document.querySelectorAll('span')]
        .find(e => e.querySelector('strong') && /^\\d+ matching runs?$/.test(e.textContent.trim()));
    const n = footer ? parseInt(footer.querySelector('strong').textContent, 10) : -1;
    return n >= low && n <= high;
}"""
_ROW_IDS_SHOWN = """wanted => {
    const rows = document.querySelectorAll('[role="row"][row-id]');
    const ids = new Set([...rows].map(r => r.getAttribute('row-id')));
    return wanted.every(id => ids.has(id));
}"""


def _select_runs_in_table(page, run_ids: dict[str, str], ancestors: dict[str, list[str]]) -> None:
    wanted = list(run_ids.values())
    # The first (unfiltered) load must land before the filter is typed: a late answer to it
    # would replace the filtered rows (seen: "10 matching runs" under a 3-run filter).
    page.wait_for_function(_FOOTER_COUNT_IN, arg=[1, 10**9])
    search = page.get_by_test_id("search-box")  # the runs search <input> itself
    search.fill("attributes.run_id IN (" + ", ".join(f"'{i}'" for i in wanted) + ")")
    search.press("Enter")
    # The filter is applied once it is in the URL and the footer counts these runs (plus the
    # parents of child runs, which the UI fetches to nest them); ticking a box before the
    # filtered data arrives would be undone when ag-grid re-renders.
    page.wait_for_url(re.compile(r"searchFilter=attributes\.run_id"))
    related = set(wanted) | {a for chain in ancestors.values() for a in chain}
    page.wait_for_function(_FOOTER_COUNT_IN, arg=[len(wanted), len(related)])
    # Child runs (a pipeline's stage runs) sit folded under their parent's row: unfold the
    # shown ancestor of each missing run (its run-name cell's expander) until all are shown.
    # Each expander is clicked once (a second click folds it again), then the rows must grow.
    unfolded: set[str] = set()
    for _ in range(8):
        shown = set(page.evaluate(_ROW_IDS))
        missing = [run_id for run_id in wanted if run_id not in shown]
        unfold = {next((a for a in ancestors.get(run_id, []) if a in shown), None)
                  for run_id in missing} - {None} - unfolded
        if not unfold:
            break
        for parent in unfold:
            cell = page.locator(f'[role="row"][row-id="{parent}"] [role="gridcell"][col-id*="Run Name"]')
            cell.locator("button").first.click()
        unfolded |= unfold
        page.wait_for_function(f"n => new Set(({_ROW_IDS})()).size > n", arg=len(shown))
    page.wait_for_function(_ROW_IDS_SHOWN, arg=wanted)
    grid = page.locator(".ag-root")
    for name, run_id in run_ids.items():
        link = grid.get_by_role("link", name=name, exact=True)  # the run-name cell's link
        link.wait_for(state="visible")
        row_id = link.locator("xpath=ancestor::*[@role='row'][1]").get_attribute("row-id")
        if row_id != run_id:
            raise AssertionError(f"row {name!r} in the runs table is run {row_id}, expected {run_id}")
        # ag-grid renders each row once per pinned container; the selection box is in one of them.
        page.locator(f'[role="row"][row-id="{run_id}"] .ag-selection-checkbox input[type="checkbox"]').check()


def _wait_for_compare_page(page, run_names: Sequence[str], run_ids: Sequence[str]) -> None:
    page.wait_for_url(re.compile(r"#/compare-runs\?"))
    shown = set(json.loads(re.search(r"runs=([^&]*)", page.url.replace("%22", '"')).group(1)))
    if shown != set(run_ids):
        raise AssertionError(f"compare page shows runs {sorted(shown)}, expected {sorted(run_ids)}")
    page.get_by_role("heading", name=re.compile(rf"Comparing {len(run_ids)} Runs")).wait_for()
    for run_id in run_ids:
        page.get_by_text(run_id, exact=True).first.wait_for()
    for name in run_names:
        page.get_by_text(name, exact=True).first.wait_for()
    for section in ("Parameters", "Metrics"):
        page.get_by_text(section, exact=True).first.wait_for()
    with suppress(Exception):  # charts and tables keep fetching for a moment; best effort
        page.wait_for_load_state("networkidle", timeout=5_000)


def _close_assistant_panel(page) -> None:
    """The "MLflow Assistant" side panel takes a third of the width; close it when present."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    with suppress(Exception):
        if close.count() and close.first.is_visible():
            close.first.click(timeout=3_000)


def full_page_screenshot(page, path: Path, anchor: str = "h1, h2") -> None:
    """MLflow scrolls its main pane, not the document, so Playwright's full_page alone captures
    one viewport: grow the viewport by what the pane around `anchor` hides, shoot, restore."""
    extra = page.locator(anchor).first.evaluate(
        """el => {
            for (let e = el.parentElement; e; e = e.parentElement) {
                const overflow = getComputedStyle(e).overflowY;
                if ((overflow === 'auto' || overflow === 'scroll') && e.scrollHeight > e.clientHeight)
                    return e.scrollHeight - e.clientHeight;
            }
            return 0;
        }"""
    )
    size = page.viewport_size
    height = min(size["height"] + int(extra), MAX_SCREENSHOT_HEIGHT)
    path.parent.mkdir(parents=True, exist_ok=True)
    if height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": height})
        page.wait_for_timeout(500)  # let the layout (charts) settle at the new size
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)


# The compare page's Metrics table is a react-virtualized grid 300 px high (names grid +
# values grid, scroll-synced): only the rows on screen exist in the DOM, so a run with many
# metrics shows a few of them in the page text. Scroll every such grid through and collect
# each row's cells by their absolute position (row = style.top, column = grid, style.left).
_HARVEST_GRIDS = """async (section) => {
    const grids = [...section.querySelectorAll('.ReactVirtualized__Grid')];
    const rows = new Map();
    const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const harvest = () => grids.forEach((grid, gi) => {
        for (const cell of grid.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > *')) {
            const top = parseFloat(cell.style.top) || 0, left = gi * 1e6 + (parseFloat(cell.style.left) || 0);
            if (!rows.has(top)) rows.set(top, new Map());
            rows.get(top).set(left, cell.innerText.trim());
        }
    });
    const scrollTo = async (grid, y, x) => {
        grid.scrollTop = y; grid.scrollLeft = x; grid.dispatchEvent(new Event('scroll'));
        await frame();
    };
    harvest();
    for (const grid of grids) {
        const inner = grid.querySelector('.ReactVirtualized__Grid__innerScrollContainer') || grid;
        // Horizontal steps only when columns really overflow (many runs): a scrollLeft change
        // re-renders the whole compare view (it syncs the tables' horizontal scroll).
        const wide = inner.scrollWidth - grid.clientWidth > 20;
        for (let x = 0; x < (wide ? inner.scrollWidth : 1); x += Math.max(50, grid.clientWidth - 50))
            for (let y = 0; y < inner.scrollHeight; y += Math.max(45, grid.clientHeight - 45)) {
                await scrollTo(grid, y, x);
                harvest();
            }
        await scrollTo(grid, 0, 0);
    }
    return [...rows.keys()].sort((a, b) => a - b).map(top => {
        const cells = rows.get(top);
        return [...cells.keys()].sort((a, b) => a - b).map(k => cells.get(k)).join('\\t');
    });
}"""


def virtualized_tables(page) -> dict[str, list[str]]:
    """{section title: every row of its virtualized table as tab-separated cells} for the
    compare page's sections (Parameters, Metrics, Tags; each has a "Show diff only" switch)."""
    tables = {}
    for switch in page.locator('button[role="switch"][aria-label$=" - Show diff only"]').all():
        title = switch.get_attribute("aria-label").removesuffix(" - Show diff only")
        section = switch.locator("xpath=ancestor::*[contains(@class, 'collapse-content-box')][1]")
        if section.count() and section.locator(".ReactVirtualized__Grid").count():
            tables[title] = section.evaluate(_HARVEST_GRIDS)
    return tables


def _save_failure(page, screenshot: Path) -> list[str]:
    saved = []
    with suppress(Exception):
        png = screenshot.with_name(screenshot.stem + ".failure.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png), full_page=True, timeout=10_000)
        saved.append(str(png))
    with suppress(Exception):
        html = screenshot.with_name(screenshot.stem + ".failure.html")
        html.write_text(page.content())
        saved.append(str(html))
    return saved


def compare_runs_in_ui(tracking_uri: str, experiment_name: str, run_names: list[str], screenshot: Path,
                       timeout_ms: int = 30_000) -> str:
    """Open the MLflow UI at `tracking_uri`, tick `run_names` in `experiment_name`'s runs table,
    click "Compare", save a full-page screenshot of the compare page to `screenshot` and return
    the page's rendered text: run names and ids, the Parameters table ("key\tvalue\tvalue" lines,
    one value per run in `run_names` order), then, since the Metrics table only renders the rows
    on screen, a "Metrics (every row)" block with all of its rows in the same format (a run
    without that metric shows "NaN" there, as on the page). Values are as displayed: MLflow
    rounds metrics to 3 significant digits (0.5625 -> "0.563").

    Each name must name exactly one run of the experiment."""
    if len(run_names) < 2:
        raise ValueError("MLflow compares two or more runs")
    reason = browser_missing()
    if reason:
        raise RuntimeError(reason)
    screenshot = Path(screenshot)
    experiment_id, run_ids = resolve_runs(tracking_uri, experiment_name, run_names)
    with chromium_page(timeout_ms) as page:
        try:
            page.goto(runs_table_url(tracking_uri, experiment_id))
            _select_runs_in_table(page, run_ids, run_ancestors(tracking_uri, list(run_ids.values())))
            page.get_by_role("button", name="Compare", exact=True).click()
            _wait_for_compare_page(page, run_names, list(run_ids.values()))
            _close_assistant_panel(page)
            full_page_screenshot(page, screenshot)
            text = page.inner_text("body")
            for title, rows in virtualized_tables(page).items():
                text += f"\n\n{title} (every row)\n" + "\n".join(rows)
            return text
        except Exception as exc:
            saved = _save_failure(page, screenshot)
            if hasattr(exc, "add_note"):
                exc.add_note(f"MLflow UI scenario failed at {page.url}; saved: {', '.join(saved) or 'nothing'}")
            raise
