"""The dashboard in a real browser: headless Chromium driven over the DevTools protocol against
the real app (uvicorn on loopback, jobs answered by a scripted model). Each test reads what a
person sees (the page's text, the chart, the screenshot's pixels), not the page's source."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from websockets.sync.client import connect  # noqa: E402

import evo.testing as T  # noqa: E402
from evo.lm import ScriptedLM  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_S = 30.0  # the bound of every wait for the page (a job here takes about a second)
# Users' text goes into instructions and demos: the page must show it as text, never as markup.
INSTRUCTION = "Label the <b>text</b> & say pos or neg."
NAME = "<b>sentiment</b> & co"



# ---- the browser -------------------------------------------------------------------------------

class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (its WebSocket)."""

    def __init__(self, profile: Path, *, size: tuple[int, int] = (1280, 1800)) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a stale one names a dead port
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._stack = contextlib.ExitStack()
        self._id = 0
        try:
            port = self._port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t["type"] == "page")
            self.ws = self._stack.enter_context(
                connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            lines = path.read_text().splitlines() if path.is_file() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError(f"chromium wrote no {path.name} in {WAIT_S} s")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command's result (the events in between are skipped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + WAIT_S
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression!r}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def texts(self, selector: str, prop: str = "textContent") -> list[str]:
        """``prop`` of each element ``selector`` matches (innerText: as rendered)."""
        return self.eval(f"[...document.querySelectorAll({json.dumps(selector)})]"
                         f".map(e => e.{prop})")

    def wait(self, expression: str, what: str) -> Any:
        """Poll ``expression`` until it is truthy (bounded); the failure shows the page's text."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            value = self.eval(f"(v => v instanceof Node || v)({expression})")
            if value:
                return value
            time.sleep(0.1)
        text = self.eval("document.body.innerText")
        raise AssertionError(f"the page never showed {what} in {WAIT_S} s; it shows:\n{text}")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'", "a loaded document")

    def screenshot(self, png: Path) -> Any:
        """The page as PNG at ``png``; returns it as an RGB array."""
        import numpy as np
        from PIL import Image  # deferred: Pillow comes with matplotlib (the bench extra)

        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        png.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---- the service (tests/service/conftest.py's ``api``: the real app on a scripted model) -------

def rows(start: int, n: int) -> list[dict[str, Any]]:
    """Sentiment rows whose text carries markup, which the page must show as text."""
    return [{"inputs": {"text": ex.inputs["text"] + " <i>ok</i>"}, "outputs": ex.outputs}
            for ex in (T.make(i) for i in range(start, start + n))]


def body(name: str, budget: int, start: int) -> dict[str, Any]:
    return {"program": {"signature": "text -> label", "instruction": INSTRUCTION,
                        "labels": ["pos", "neg"]},
            "data": {"trainset": rows(start, 16), "valset": rows(start + 100, 10)},
            "budget": budget, "name": name}


@pytest.fixture
def scripted_lm(gate: threading.Event) -> ScriptedLM:
    """The scripted model; while the gate is closed, every call but the session's preflight and
    the seed program's answers waits: a job held there has shown its seed's score, and has more
    to come."""

    def respond(request: Any) -> str:
        seed = (request.purpose == "task" and len(request.messages) == 2
                and INSTRUCTION in request.messages[0].content)
        if not (seed or request.purpose == "preflight"):
            gate.wait(WAIT_S)
        return T.respond(request)

    return ScriptedLM(respond, max_concurrency=4)


def submit(api: Any, payload: dict[str, Any], path: str = "/api/v1/optimize") -> str:
    r = api.post(path, json=payload)
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    b = Browser(tmp_path / "chromium-profile")
    try:
        yield b
    finally:
        b.close()


# ---- the tests ---------------------------------------------------------------------------------

def _jobs_row(job_id: str) -> str:
    return f"document.querySelector('#jobs tbody tr[data-id=\"{job_id}\"]')"


def test_a_finished_job_and_an_experiment_as_a_person_sees_them(
        api: Any, browser: Browser, tmp_path: Path) -> None:
    job = submit(api, body(NAME, 60, 0))
    status = api.wait(job)
    assert status["status"] == "done", status
    result = api.get(f"/api/v1/optimizations/{job}/result").json()
    exp = submit(api, {"name": "seed vs best", "b": {"job": job}, "data": {"rows": rows(300, 12)},
                       "a": {"signature": "text -> label", "labels": ["pos", "neg"]}},
                 "/api/v1/experiments")
    assert api.wait(exp)["status"] == "done"
    experiment = api.get(f"/api/v1/experiments/{exp}").json()["result"]

    browser.goto(f"{api.url}/#key={api.keys['viewer']}")
    assert browser.eval("location.hash") == "", "the key stays in the address bar"
    row = _jobs_row(job)
    browser.wait(f"{row} && {row}.innerText.includes('done')", f"job {job} done")
    cells = browser.eval(f"[...{row}.cells].map(c => c.innerText.trim())")
    assert cells[:4] == [job, NAME, "optimize", "done"] and cells[4] == "100%"
    assert cells[5] == f"{status['best_score']:.3f}" == f"{result['best_score']:.3f}"
    assert cells[6] == f"{status['metric_calls']} / {status['budget']}"

    browser.eval(f"{row}.click()")
    browser.wait("document.querySelector('#chart svg path.best')", "the chart")
    browser.wait("document.querySelector('#best-instruction').textContent.length > 0",
                 "the best instruction")
    shown = browser.eval("document.querySelector('#best-instruction').textContent")
    assert shown == result["best_program"]["instruction"]
    # users' markup is text: no element was made of it, and the person reads it as written
    assert browser.eval("document.querySelectorAll('main b, main i').length") == 0
    demos = result["best_program"]["demos"]
    shown_demos = browser.texts("#best-demos li", "innerText")
    assert len(shown_demos) == len(demos)
    for seen, demo in zip(shown_demos, demos):
        assert demo["inputs"]["text"] in seen and "<i>ok</i>" in seen

    path = browser.eval("document.querySelector('#chart svg path.best').getAttribute('d')")
    assert path.startswith("M") and path.count("V") == len(result["curve"]) - 1
    ticks = browser.texts("#chart svg text.tick")
    assert len(ticks) >= 4 and "0" in ticks and str(status["budget"]) in ticks
    best_label = browser.eval("document.querySelector('#chart svg text.best-label').textContent")
    assert best_label == f"best {result['curve'][-1][1]:.3f}"

    lineage = browser.eval("document.querySelector('#lineage').innerText")
    for cand in result["candidates"]:
        assert f"#{cand['id']}" in lineage
    browser.wait("[...document.querySelectorAll('#events li')]"
                 ".some(li => li.textContent.includes('complete'))", "the events")
    events = browser.texts("#events li")
    assert any("new_best" in e for e in events)
    seqs = [int(s) for s in browser.texts("#events li", "dataset.seq")]
    assert seqs == list(range(1, len(seqs) + 1)), "events missed or repeated"

    erow = f"document.querySelector('#experiments tbody tr[data-id=\"{exp}\"]')"
    browser.wait(f"{erow} && {erow}.cells[8].innerText !== '—'", "the experiment's p-value")
    ecells = browser.eval(f"[...{erow}.cells].map(c => c.innerText.trim())")
    p = experiment["p_value"]
    assert ecells[:3] == [exp, "seed vs best", "done"]
    assert ecells[8] == ("< 0.001" if p < 0.001 else f"{p:.3f}")
    assert ecells[9] == experiment["decision"]
    diff = experiment["diff"]
    assert ecells[6] == ("+" if diff > 0 else "") + f"{diff:.3f}"

    assert browser.eval("document.querySelector('#page-info').textContent") == "1–2 of 2"
    text = browser.eval("document.body.innerText")
    assert job in text and exp in text and "Score vs metric calls" in text
    assert not browser.eval("!document.querySelector('#error').hidden")

    pixels = browser.screenshot(tmp_path / "dashboard.png")
    colours = {tuple(int(c) // 16 for c in px) for px in pixels[::7, ::7].reshape(-1, 3)}
    assert len(colours) >= 8, "the screenshot is nearly blank"
    box = browser.eval("(() => { const r = document.querySelector('#chart svg')"
                       ".getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })()")
    left, top, right, bottom = (round(v) for v in box)
    chart = pixels[top:bottom, left:right]
    assert chart.size, "the chart is off the screenshot"
    assert len({tuple(px) for px in chart.reshape(-1, 3)}) >= 3, "the chart region is blank"


def test_a_running_job_moves_live(api: Any, gate: threading.Event, browser: Browser) -> None:
    browser.goto(f"{api.url}/#key={api.keys['viewer']}")
    browser.wait("document.querySelector('#jobs tbody tr.empty')", "the empty jobs table")
    gate.clear()  # the job is held after its seed's validation
    job = submit(api, body("live", 60, 1000))
    row = _jobs_row(job)
    browser.wait(f"{row} && {row}.innerText.includes('running')", f"job {job} running")
    browser.eval(f"{row}.click()")
    # its first events arrive over the WebSocket, and the chart starts from them
    browser.wait("[...document.querySelectorAll('#events li')]"
                 ".some(li => li.textContent.includes('new_best'))", "the seed's new_best")
    browser.wait("document.querySelector('#chart svg path.best')", "the live chart")
    assert browser.eval("document.querySelector('#best-instruction').textContent") == ""
    before = browser.texts("#events li")
    progress = browser.wait(f"+{row}.querySelector('.progress').dataset.value",
                            "the seed's calls in the progress bar")
    assert progress < 1
    # the connection drops: the page reconnects after the last event it saw
    browser.eval("state.detail.ws.close()")
    browser.wait("state.detail.connects === 2 && state.detail.ws.readyState === 1"
                 " && document.querySelector('#ws-state').textContent === 'live'",
                 "the events reconnected")
    assert browser.texts("#events li") == before
    gate.set()
    browser.wait(f"document.querySelectorAll('#events li').length > {len(before)}",
                 "new events")
    browser.wait(f"+{row}.querySelector('.progress').dataset.value > {progress}",
                 "the progress bar moving")
    browser.wait(f"{row}.innerText.includes('done')", "the job done")
    browser.wait("document.querySelector('#ws-state').textContent === 'ended: done'",
                 "the end of the stream")
    browser.wait("document.querySelector('#best-instruction').textContent.length > 0",
                 "the best instruction")
    seqs = [int(s) for s in browser.texts("#events li", "dataset.seq")]
    assert seqs == list(range(1, len(seqs) + 1)), "events missed or repeated"
    assert browser.eval(f"+{row}.querySelector('.progress').dataset.value") == 1


def test_a_wrong_key_says_so(api: Any, browser: Browser) -> None:
    browser.goto(f"{api.url}/#key=evo_k-000000000000_wrong")
    message = browser.wait("(() => { const e = document.querySelector('#error');"
                           " return !e.hidden && e.innerText; })()", "the error")
    assert "API key was refused (401)" in message
    assert browser.eval("document.querySelectorAll('#jobs tbody tr[data-id]').length") == 0
    # a good key then shows the jobs, and the message goes
    browser.eval(f"document.querySelector('#key').value = {json.dumps(api.keys['viewer'])};"
                 " document.querySelector('#key-form').requestSubmit()")
    browser.wait("document.querySelector('#error').hidden", "the error gone")
