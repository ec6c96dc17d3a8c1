"""Snakemake's HTML report of a finished run, opened in headless Chromium: every figure is listed in its
category, every image decodes, the page runs without errors; and every caption renders from a config."""
from __future__ import annotations

import base64
import copy
import json
import os
import select
import shutil
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from workflow_run import ROOT, copy_run, snakemake, tiny_config, write_config

from workflow_scripts.plots.registry import FIGURES

CATEGORIES = ["1. Overview", "2. Pretraining", "3. Alignment", "4. Per task", "5. Analysis"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                  "--remote-debugging-pipe", "--allow-file-access-from-files"]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) on PATH; `make test` installs Debian's `chromium` where it is missing."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads commands
    on fd 3 and writes replies and events on fd 4, each a JSON message ended by NUL), so that no
    WebSocket client is needed."""

    def __init__(self, executable: str, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        commands, self._commands = os.pipe()
        self._replies, replies = os.pipe()
        self.log = profile / "chromium.log"
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        null = os.open(os.devnull, os.O_RDONLY)
        self.pid = os.posix_spawn(
            executable, [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile / 'user-data'}", "about:blank"],
            dict(os.environ), setpgroup=0, file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                (os.POSIX_SPAWN_DUP2, commands, 3), (os.POSIX_SPAWN_DUP2, replies, 4)])
        for fd in (commands, replies, log, null):
            os.close(fd)
        self._buffer, self._id, self.events = b"", 0, []

    def _message(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError(f"no reply from Chromium in {timeout} s; its log:\n{self.log.read_text()[-3000:]}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium closed the pipe; its log:\n{self.log.read_text()[-3000:]}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        """The result of a command (events that come meanwhile are kept in .events)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        """The first event `method`, kept or to come."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._message(max(0.1, deadline - time.monotonic())))

    def evaluate(self, session: str, expression: str, timeout: float = 60):
        """The JSON value of a JavaScript expression (promises awaited) in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session, timeout)
        if "exceptionDetails" in result:
            raise AssertionError(f"the page threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        for _ in range(50):
            if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.1)
        else:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        for fd in (self._commands, self._replies):
            os.close(fd)

    def errors(self) -> list[str]:
        """The page's uncaught exceptions, console errors and error log entries so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description') or params}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                values = [a.get("value", a.get("description")) for a in params["args"]]
                out.append(f"console.{params['type']}: {values}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        return out


def report_config(model_dir) -> dict:
    """The tiny config of test_workflow, with a second model of the family at another stage (two groups
    of reliability diagrams per task) and the family as a suite (the scale figures)."""
    config = copy.deepcopy(tiny_config(model_dir))
    config["models"]["tiny-chat"] = {**config["models"]["tiny"], "stage": "sft"}
    config["figures"] = {"suites": ["tiny"]}
    return config


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_run, tiny_model_dir):
    """A finished run of report_config and its report.html, and how long the run and the report took. The run
    is a copy of conftest's tiny_run (the tiny config, finished) that report_config's second model and suite
    complete, as a reader who adds them to a finished run would."""
    workdir = copy_run(tiny_run, tmp_path_factory.mktemp("report") / "wf")
    path = write_config(workdir, report_config(tiny_model_dir), "report.yaml")
    start = time.monotonic()
    snakemake(workdir, path, "--cores", "2")
    run_s = time.monotonic() - start
    snakemake(workdir, path, "--report", str(workdir / "report.html"))
    return workdir, {"run_s": run_s, "report_s": time.monotonic() - start - run_s}


def embedded(html: str, name: str):
    """The JSON value of `var <name> = ...;` in the script element of id <name> of Snakemake's report."""
    start = html.index(f"var {name} = ", html.index(f'<script id="{name}">')) + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


def test_report_lists_every_figure_in_its_category(reported_run):
    workdir, _ = reported_run
    html = (workdir / "report.html").read_text()
    categories, results = embedded(html, "categories"), embedded(html, "results")
    figures = {str(p.relative_to(workdir)) for p in (workdir / "results" / "figures").rglob("*.png")}
    assert set(results) == figures | {"results/metrics/summary.html"}
    assert sorted(categories) == ["1. Overview", "2. Pretraining", "4. Per task", "5. Analysis"]  # no alignment here
    assert set(categories["4. Per task"]) == {"facts", "geo", "prose"}  # a subcategory per task
    per_task = {path for task in categories["4. Per task"].values() for path in task}
    assert per_task == {f"results/figures/{name}_{t}.png" for t in ("facts", "geo", "prose")
                        for name in ("reliability", "risk_coverage")} | \
        {f"results/figures/reliability/{t}/tiny-{stage}.png" for t in ("facts", "geo", "prose")
         for stage in ("base", "sft")}
    assert set(categories["1. Overview"]["Other"]) == {"results/figures/summary.png", "results/metrics/summary.html"}
    for path, result in results.items():  # captions rendered from their templates, with the config's numbers
        assert result["caption"] and "system-message" not in result["caption"], path
    group = results["results/figures/reliability/geo/tiny-sft.png"]
    caption = " ".join(group["caption"].split())
    assert "1 run(s) of 1 model(s)" in caption and "tiny-chat" in caption and "mailto" not in caption
    assert "10 equal-width bins" in caption and "50 resamples" in caption
    assert group["labels"] == {"figure": "reliability", "models": "tiny-sft"}
    table = base64.b64decode(results["results/metrics/summary.html"]["data_uri"].split(",", 1)[1]).decode()
    import pandas as pd

    summary = pd.read_csv(workdir / "results" / "metrics" / "summary.csv")
    assert table.count("<tr") == len(summary) + 1


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium: `make test` installs Debian's chromium "
                    "(apt-get install chromium), which this machine could not")
def test_report_renders_in_chromium(reported_run, tmp_path):
    workdir, timing = reported_run
    html = (workdir / "report.html").read_text()
    categories, results = embedded(html, "categories"), embedded(html, "results")
    browser = DevTools(find_chromium(), tmp_path / "chromium")
    shots = tmp_path / "screenshots"
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1600, "height": 1000, "deviceScaleFactor": 1,
                                                            "mobile": False}, session)
        browser.send("Page.navigate", {"url": (workdir / "report.html").as_uri()}, session)
        browser.wait_for("Page.loadEventFired", timeout=120)
        assert browser.evaluate(session, "new Promise(r => setTimeout(() => r(typeof app), 500))") == "object"
        menu = browser.evaluate(session, "document.querySelector('#app').innerText")
        for category in categories:
            assert category in menu
        browser.screenshot(session, shots / "start.png")

        # every category and subcategory lists each of its results (by its labels), opened from the menu as
        # a reader does (the report's result list keeps its first content when switched without the menu)
        shown = json.loads(browser.evaluate(session, """(async () => {
            const sleep = ms => new Promise(r => setTimeout(r, ms));
            const seen = {};
            for (const category of Object.keys(categories)) {
                for (const sub of Object.keys(categories[category])) {
                    app.setView({navbarMode: "menu"});
                    await sleep(100);
                    app.setView({navbarMode: "subcategory", category: category, subcategory: sub});
                    await sleep(200);
                    seen[category + "|" + sub] = document.querySelector("#app").innerText;
                }
            }
            return JSON.stringify(seen);
        })()""", timeout=120))
        for category, subcategories in categories.items():
            for sub, paths in subcategories.items():
                text = shown[f"{category}|{sub}"]
                for path in paths:
                    for value in results[path]["labels"].values():
                        assert value in text, (category, sub, path, value)

        # every figure decodes in the browser at the size of its file
        sizes = json.loads(browser.evaluate(session, """(async () => {
            const out = {};
            for (const [path, result] of Object.entries(results)) {
                if (!result.mime_type.startsWith("image/")) continue;
                const image = new Image();
                image.src = result.data_uri;
                await image.decode();
                out[path] = [image.naturalWidth, image.naturalHeight];
            }
            return JSON.stringify(out);
        })()""", timeout=120))
        from PIL import Image

        for path in results:
            if path.endswith(".png"):
                with Image.open(workdir / path) as image:
                    assert sizes[path] == list(image.size), path

        # the overview: its category, the heatmap and the summary table on screen
        browser.evaluate(session, "app.setView({navbarMode: 'menu'}); new Promise(r => setTimeout(r, 200))")
        browser.evaluate(session, "app.showCategory('1. Overview'); new Promise(r => setTimeout(r, 300))")
        listed = browser.evaluate(session, "document.querySelector('#app').innerText")
        assert "summary.csv (table)" in listed and "recalibration" not in listed.split("Calibration of")[0]
        browser.screenshot(session, shots / "overview.png")
        for path, name in (("results/figures/summary.png", "summary"), ("results/metrics/summary.html", "table")):
            content = "img" if path.endswith(".png") else "html"
            browser.evaluate(session, f"app.setView({{content: '{content}', contentPath: results['{path}'].data_uri}});"
                                      "new Promise(r => setTimeout(r, 800))")
            picture = browser.screenshot(session, shots / f"{name}.png")
            with Image.open(picture) as image:
                pixels = np.asarray(image.convert("L"), dtype=float)
            assert pixels.std() > 10, f"{name}: the screenshot is blank"
        assert browser.errors() == []
    finally:
        browser.close()
    assert sorted(p.name for p in shots.iterdir()) == ["overview.png", "start.png", "summary.png", "table.png"]
    print(f"\nrun {timing['run_s']:.0f} s, report {timing['report_s']:.0f} s; screenshots in {shots}")


# --- captions rendered from a config, as Snakemake's report renders them -----------------------------------------

def render_caption(name: str, config: dict, params: dict, wildcards: dict) -> str:
    """The HTML of report/<name>.rst rendered as Snakemake's report does (Jinja2, then docutils)."""
    from types import SimpleNamespace

    from docutils.core import publish_parts
    from jinja2 import Environment, StrictUndefined

    template = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined).from_string(
        (ROOT / "report" / f"{name}.rst").read_text())
    snakemake_ = SimpleNamespace(config=config, params=SimpleNamespace(**params),
                                 wildcards=SimpleNamespace(**wildcards))
    with warnings.catch_warnings():  # docutils' notice on writer_name, which Snakemake's report passes too
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        html = publish_parts(template.render(snakemake=snakemake_), writer_name="html")["body"]
    return " ".join(html.split())


def test_every_caption_renders_from_the_default_config():
    """Captions of figures the tiny run does not draw (pretraining, alignment) too: every key they read
    exists in the default config (StrictUndefined) and the text is valid reStructuredText."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, str(ROOT / "config" / "schema.yaml"))
    methods = {task: "m" for task in config["tasks"]}
    runs = [["geo-neox-xs-standard", "step256"], ["geo-neox-s-standard", "step256"]]
    task = {"task": "facts"}
    figures = {
        "workflow": ({}, {}), "summary": ({"methods": methods, "n_runs": 32}, {}), "summary_table": ({}, {}),
        "reliability": ({"runs": runs, "methods": methods, "task_methods": ["a", "b"]}, {**task, "group": "g"}),
        "reliability_index": ({"groups": {"g": runs}, "methods": methods}, task),
        "scale": ({"suites": ["geo-neox"], "methods": methods}, {}),
        "dynamics": ({"dynamics": ["geo-neox-l-standard"], "methods": methods}, {}),
        "reliability_scale": ({"suites": ["geo-neox"], "methods": methods}, task),
        "pretrain_loss": ({"variants": {}}, {}), "alignment": ({"alignment": {}, "methods": methods}, {}),
        "rlhf": ({"alignment": {}, "methods": methods}, {}), "diversity": ({}, {}),
        "recalibration": ({"suites": [], "dynamics": [], "alignment": {}, "methods": methods}, {}),
        "risk_coverage": ({"suites": ["geo-neox"], "dynamics": [], "alignment": {}, "methods": methods}, task),
        "metric_agreement": ({}, {}),
    }
    assert set(figures) == {p.stem for p in (ROOT / "report").glob("*.rst")}
    for figure in FIGURES:  # the params each caption is rendered with are those of its rule
        assert set(figures[figure.caption][0]) == {*figure.params, *figure.caption_params}, figure.name
    for name, (params, wildcards) in figures.items():
        html = render_caption(name, config, params, wildcards)
        assert "system-message" not in html, (name, html)
        assert "{{" not in html and "{%" not in html, name
    assert "256 steps" in render_caption("pretrain_loss", config, {}, {})
    assert "4 sizes (xs, s, m, l) x 2 data variants" in render_caption("pretrain_loss", config, {}, {})
    assert "narrow, broad" in render_caption("alignment", config, {"alignment": {}, "methods": methods}, {})
    workflow = render_caption("workflow", config, {}, {})
    assert "geo-neox" in workflow and "4 tasks" in workflow and "1000" in workflow
    checkpoints = len(config["pretrain"]["checkpoints"])
    assert f"at {checkpoints} checkpoints) and the models aligned from" in workflow  # no word lost at a template tag
    reliability = render_caption("reliability", config, {"runs": runs + [["m", "main"]], "methods": methods,
                                                         "task_methods": ["a"]}, {**task, "group": "g"})
    assert "3 run(s) of 3 model(s)" in reliability and "mailto" not in reliability
    assert all(category in workflow for category in CATEGORIES)
    no_suite = {key: value for key, value in config.items() if key not in ("pretrain", "align")}
    assert "geo-neox" not in render_caption("workflow", no_suite, {}, {})
