"""Load on the optimization service (`evo serve`), on loopback only, with a fake LM of fixed
latency (evo.testing.latency_server in its own process). Every phase is bounded in count and
time and stops by itself; the servers are killed at the end whatever happens.

    python benchmarks/service_load.py                     # every phase (~3 min on 2 cores)
    python benchmarks/service_load.py --phases submit,status --jobs 200

Phases (each prints one line and goes into the JSON written to --out):
- ``submit``: ``--jobs`` optimizations (tiny budgets) POSTed at once by ``--clients`` clients;
  all must end "done", none lost (each id listed once, the list's total equals the ids).
- ``status``: ``--clients`` concurrent clients each GET a job's status ``--polls`` times: the
  latency's p50 / p99 / max, and requests per second.
- ``ws``: ``--subscribers`` WebSocket clients subscribe to one running job: each must receive
  every event, in order (seq 1..N, no gap, no repeat), the same as GET .../events.
- ``workers``: jobs per minute for each worker count of ``--worker-counts`` (a fresh server and
  home each; ``--throughput-jobs`` jobs).
- ``restart``: ``--restart-jobs`` jobs submitted, the server SIGKILLed once some are done and
  others running, started again on the same home: every job ends done, none is lost, and the
  only requests asked again are those whose answers never reached a journal (what the fake LM
  served, less the journals' paid answers, less one unjournaled LM check per sitting): the ones
  in flight at the kill, by the fake LM's spans, and any answered just before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import websockets

from evo.lm.journal import Journal
from evo.testing.latency_server import free_port, spawned

ROOT = Path(__file__).resolve().parent.parent
SECRET = re.compile(r"evo_k-[0-9a-f]+_[A-Za-z0-9_-]+")
LABELS = ("pos", "neg", "neutral")  # the fake LM's default label set


@contextmanager
def fake_lm(latency: float) -> Iterator[str]:
    """The fixed-latency fake LM in its own process; yields its API base."""
    with spawned("--latency", str(latency), "--max-seconds", "3000") as base:
        yield base


def lm_stats(base: str) -> dict[str, Any]:
    stats = httpx.get(base + "/stats", timeout=30).json()
    stats.pop("spans", None)
    return stats


class Server:
    """`evo serve` in its own process on a free loopback port."""

    def __init__(self, home: Path, lm_base: str, *, workers: int) -> None:
        self.home, self.lm_base, self.workers = home, lm_base, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.key: str | None = None

    def start(self, timeout: float = 120) -> Server:
        log = open(self.home.parent / f"serve-{self.port}-{time.time():.0f}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evo.cli", "serve", "--home", str(self.home), "--port",
             str(self.port), "--workers", str(self.workers), "--rate", "100000000",
             "--model", "openai/latency", "--api-base", self.lm_base, "--api-key", "fake",
             "--no-cache"],
            # its output to a file: a pipe nobody reads would fill and block its access log
            stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"evo serve exited {self.proc.returncode}: see {log.name}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"evo serve did not answer in {timeout} s: see {log.name}")
        if self.key is None:  # an operator key of tenant "bench", made from the shell
            self.key = self._read_key()
        return self

    def _read_key(self) -> str:
        out = subprocess.run([sys.executable, "-m", "evo.cli", "serve", "keys", "create",
                              "--home", str(self.home), "--tenant", "bench", "--role",
                              "operator", "--name", "load"],
                             capture_output=True, text=True, timeout=60)
        found = SECRET.search(out.stdout)
        if found is None:
            raise RuntimeError(f"no key in `evo serve keys create`'s output: {out.stdout}"
                               f"{out.stderr}")
        return found.group(0)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def job_body(i: int, budget: int) -> dict[str, Any]:
    """A tiny optimization: 8 rows of a three-label task (the fake LM's labels), distinct per
    job so no two jobs share a request."""
    rows = [{"inputs": {"text": f"job {i} review {k}: the item was {LABELS[k % 3]}"},
             "outputs": {"label": LABELS[(k * 7 + i) % 3]}} for k in range(8)]
    return {"program": {"signature": "text -> label", "labels": list(LABELS)},
            "data": {"rows": rows, "val_share": 0.5}, "optimizer": "evolution",
            "params": {"knn": False}, "budget": budget, "name": f"load-{i % 10}"}


async def submit_all(server: Server, n: int, clients: int, budget: int,
                     start: int = 0) -> list[str]:
    sem = asyncio.Semaphore(clients)
    async with _session(server, clients) as client:
        async def one(i: int) -> str:
            async with sem, client.post("/api/v1/optimize", json=job_body(i, budget)) as r:
                if r.status != 202:
                    raise RuntimeError(f"submit {i}: {r.status} {await r.text()}")
                return (await r.json())["id"]

        return list(await asyncio.gather(*(one(start + i) for i in range(n))))


def _session(server: Server, clients: int) -> aiohttp.ClientSession:
    """The load's client: aiohttp, whose pool stays cheap at 200 connections (httpx's async
    pool, tried first, was the bottleneck there: it measured itself, not the server)."""
    return aiohttp.ClientSession(server.url, headers=server.headers,
                                 connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=300))


def listed(server: Server) -> dict[str, str]:
    """Every job the key's tenant sees, id -> status, page by page."""
    out: dict[str, str] = {}
    offset = 0
    while True:
        page = httpx.get(server.url + "/api/v1/optimizations", headers=server.headers,
                         params={"limit": 200, "offset": offset}, timeout=120).json()
        for item in page["items"]:
            if item["id"] in out:
                raise RuntimeError(f"job {item['id']} listed twice")
            out[item["id"]] = item["status"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return out


def wait_all(server: Server, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = listed(server)
        left = [i for i in ids if seen.get(i) not in ("done", "failed", "cancelled")]
        if not left or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# ---- phases ----------------------------------------------------------------------------------

def phase_submit(args: argparse.Namespace, work: Path, lm_base: str) -> dict[str, Any]:
    server = Server(work / "submit", lm_base, workers=args.workers).start()
    try:
        t0 = time.perf_counter()
        ids = asyncio.run(submit_all(server, args.jobs, args.clients, args.budget))
        submitted = time.perf_counter() - t0
        seen = wait_all(server, ids, args.max_seconds)
        total = time.perf_counter() - t0
        done = sum(seen.get(i) == "done" for i in ids)
        out = {"jobs": args.jobs, "clients": args.clients, "workers": args.workers,
               "budget": args.budget, "submit_s": round(submitted, 2),
               "accepted": len(set(ids)), "listed": len(seen), "done": done,
               "lost": len(set(ids) - set(seen)),
               "not_done": {s: sum(seen.get(i) == s for i in ids)
                            for s in ("queued", "running", "failed", "cancelled")},
               "all_done_s": round(total, 1),
               "jobs_per_min": round(done / total * 60, 1)}
        out["status_sample"] = httpx.get(f"{server.url}/api/v1/optimizations/{ids[0]}/status",
                                         headers=server.headers, timeout=30).json()
        return out
    finally:
        server.stop()


async def _poll(server: Server, job: str, clients: int, polls: int) -> list[float]:
    async with _session(server, clients) as client:
        async def one() -> list[float]:
            took = []
            for _ in range(polls):
                t = time.perf_counter()
                async with client.get(f"/api/v1/optimizations/{job}/status") as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"status: {r.status}")
                took.append(time.perf_counter() - t)
            return took

        return [t for part in await asyncio.gather(*(one() for _ in range(clients)))
                for t in part]


def phase_status(args: argparse.Namespace, work: Path, lm_base: str) -> dict[str, Any]:
    server = Server(work / "status", lm_base, workers=args.workers).start()
    try:
        ids = asyncio.run(submit_all(server, 20, 20, args.budget))
        wait_all(server, ids[:1], 300)  # one done; the others queued or running meanwhile
        out: dict[str, Any] = {}
        # the reference, in the same run: one client alone, then the crowd
        for label, clients, polls in (("one_client", 1, 200),
                                      ("clients", args.clients, args.polls)):
            t0 = time.perf_counter()
            took = asyncio.run(_poll(server, ids[0], clients, polls))
            wall = time.perf_counter() - t0
            out[label] = {"clients": clients, "requests": len(took),
                          "p50_ms": round(percentile(took, 50) * 1000, 1),
                          "p99_ms": round(percentile(took, 99) * 1000, 1),
                          "max_ms": round(max(took) * 1000, 1),
                          "requests_per_s": round(len(took) / wall)}
        out["p50_vs_one_client"] = round(out["clients"]["p50_ms"] / out["one_client"]["p50_ms"], 1)
        out["throughput_vs_one_client"] = round(out["clients"]["requests_per_s"]
                                                / out["one_client"]["requests_per_s"], 2)
        return out
    finally:
        server.stop()


async def _subscribe(url: str, key: str, n: int, timeout: float) -> list[list[int]]:
    async def one() -> list[int]:
        seqs = []
        async with websockets.connect(f"{url}&key={key}", open_timeout=60,
                                      max_size=2**24) as ws:
            async for message in ws:
                event = json.loads(message)
                if event.get("event") == "end":
                    break
                seqs.append(event["seq"])
        return seqs

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout)


def phase_ws(args: argparse.Namespace, work: Path, lm_base: str) -> dict[str, Any]:
    server = Server(work / "ws", lm_base, workers=1).start()
    try:
        (job,) = asyncio.run(submit_all(server, 1, 1, max(args.budget, 60)))
        ws_url = server.url.replace("http://", "ws://") + f"/ws/optimizations/{job}?after=0"
        t0 = time.perf_counter()
        got = asyncio.run(_subscribe(ws_url, server.key or "", args.subscribers,
                                     args.max_seconds))
        wall = time.perf_counter() - t0
        events = httpx.get(f"{server.url}/api/v1/optimizations/{job}/events",
                           headers=server.headers, timeout=60).json()
        events = events["items"]
        want = [e["seq"] for e in events]
        complete = sum(seqs == want for seqs in got)
        return {"subscribers": args.subscribers, "events": len(want),
                "complete_in_order": complete, "delivered": sum(map(len, got)),
                "wall_s": round(wall, 1)}
    finally:
        server.stop()


def phase_workers(args: argparse.Namespace, work: Path, lm_base: str) -> dict[str, Any]:
    rows = []
    for workers in args.worker_counts:
        server = Server(work / f"workers-{workers}", lm_base, workers=workers).start()
        try:
            t0 = time.perf_counter()
            ids = asyncio.run(submit_all(server, args.throughput_jobs, 50, args.budget))
            seen = wait_all(server, ids, args.max_seconds)
            took = time.perf_counter() - t0
            done = sum(seen.get(i) == "done" for i in ids)
            rows.append({"workers": workers, "jobs": len(ids), "done": done,
                         "seconds": round(took, 1), "jobs_per_min": round(done / took * 60, 1)})
            print(f"  workers {workers}: {rows[-1]}", flush=True)
        finally:
            server.stop()
    return {"rows": rows}


def phase_restart(args: argparse.Namespace, work: Path, lm_base: str) -> dict[str, Any]:
    home = work / "restart"
    server = Server(home, lm_base, workers=args.workers).start()
    before = lm_stats(lm_base)["served"]
    try:
        ids = asyncio.run(submit_all(server, args.restart_jobs, 50, args.budget))
        deadline = time.monotonic() + args.max_seconds
        while time.monotonic() < deadline:  # kill once some are done and others still wait
            seen = listed(server)
            if sum(s == "done" for s in seen.values()) >= len(ids) // 4:
                break
            time.sleep(0.5)
        at_kill = {s: sum(v == s for v in seen.values()) for s in ("queued", "running", "done")}
        killed_at = time.monotonic()  # the fake LM's spans are on the same clock (Linux)
        server.kill()
        time.sleep(1.0)  # the fake LM finishes the requests the dead server had sent
        spans = httpx.get(lm_base + "/stats", timeout=30).json()["spans"]
        inflight = sum(start < killed_at < end for start, end in spans)
        server.start()
        seen = wait_all(server, ids, args.max_seconds)
    finally:
        server.stop()
    served = lm_stats(lm_base)["served"] - before
    # each sitting of a job checks the LM once (an unjournaled preflight: no cache here), then
    # pays each of its requests once in the job's journal
    ledgers = [Journal(p).ledger() for p in (home / "jobs" / "runs").glob("*/journal.sqlite")]
    paid = sum(s["paid"] for ledger in ledgers for s in ledger)
    sittings = sum(len(ledger) for ledger in ledgers)
    return {"jobs": len(ids), "at_kill": at_kill,
            "done": sum(seen.get(i) == "done" for i in ids),
            "lost": len(set(ids) - set(seen)), "lm_served": served, "journal_paid": paid,
            "sittings": sittings, "resumed_jobs": sum(len(ledger) > 1 for ledger in ledgers),
            # answered by the fake LM but in no journal, so asked again: those in flight at the
            # kill, and those answered just before it whose reply the dying server had not yet
            # read and journaled. A journaled answer is never asked again: the journal's key is
            # unique and a resumed run replays it.
            "asked_again": served - paid - sittings, "in_flight_at_kill": inflight,
            "answered_just_before_kill": served - paid - sittings - inflight}


PHASES = {"submit": phase_submit, "status": phase_status, "ws": phase_ws,
          "workers": phase_workers, "restart": phase_restart}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--latency", type=float, default=0.02, help="the fake LM's seconds a call")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=8, help="metric calls per job")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--polls", type=int, default=25, help="status requests per client")
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--worker-counts", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 2, 4, 8])
    ap.add_argument("--throughput-jobs", type=int, default=100)
    ap.add_argument("--restart-jobs", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=900, help="per wait, at most")
    ap.add_argument("--out", default="benchmarks/results/service-load.json")
    ap.add_argument("--work", help="keep the homes and server logs here (default: a temporary "
                                   "folder, removed at the end)")
    args = ap.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    results: dict[str, Any] = {"latency_s": args.latency, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="evo-service-load-") as tmp, \
            fake_lm(args.latency) as lm_base:
        if args.work:
            tmp = args.work
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for name in phases:
            t0 = time.perf_counter()
            results[name] = PHASES[name](args, Path(tmp), lm_base)
            results[name]["phase_s"] = round(time.perf_counter() - t0, 1)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
