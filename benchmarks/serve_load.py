"""Load test for `repytilian serve`: C clients x R requests on 127.0.0.1, then latency and throughput.

    python3 benchmarks/serve_load.py [--clients 8] [--requests 50] [--tokens 32] [--model shakespeare/v2c]
    python3 benchmarks/serve_load.py --compare 1,8,32 --tokens 64 --requests 20 [--compile]

It starts the server itself (the real command line, on a free port), runs a fixed number of
requests (the loops are bounded: it stops by itself), stops the server and prints one table:
errors, p50/p99 latency, requests/s and generated tokens/s, and the CPU the server and the
clients used (cores, and milliseconds a request: on one machine they share its cores). The
server's queue is sized to the number of clients, so any error here is a real failure, not a
refusal by design. With `--compare`, one server takes each number of clients in turn (after a
warm-up request), and each row also gives its tokens/s as a multiple of the first row's and its
p99 latency as a multiple of the first row's p50 (a request's latency alone, where the first row
has one client).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_server(models: Path, clients: int, concurrent: int | None,
                 compile: bool = False, lanes: int | None = None, dtype: str = "auto") -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limits = ["--max-queue", str(clients)] + (["--max-concurrent", str(concurrent)] if concurrent else [])
    limits += ["--compile"] if compile else []
    limits += ["--lanes", str(lanes)] if lanes else []
    limits += ["--dtype", dtype] if dtype != "auto" else []
    proc = subprocess.Popen([sys.executable, "-m", "repytilian", "serve", "--models", str(models), "--port", "0",
                             *limits],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
    proc.kill()
    raise SystemExit("the server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system) so far of process `pid` (Linux's /proc), or of this process, all its threads."""
    if pid is None:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run(url: str, model: str, clients: int, requests: int, tokens: int, stream: bool,
        server_pid: int | None = None) -> dict:
    """The load, and where the CPU went: the server's (`server_pid`, where /proc tells it) and the
    clients' own (this process), which share the machine's cores when both run on it."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    generated = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:  # a first request may wait for a build
            for i in range(requests):  # bounded: each client makes exactly `requests` requests
                body = {"model": model, "prompt": "ROMEO:", "max_tokens": tokens, "seed": k * 1000 + i,
                        "stream": stream}
                t0 = time.perf_counter()
                try:
                    if stream:
                        with http.stream("POST", "/v1/completions", json=body) as r:
                            count = sum(1 for line in r.iter_lines() if line.startswith("data: {"))
                            ok, what = r.status_code == 200, f"HTTP {r.status_code}"
                            produced = max(0, count - 1)
                    else:
                        r = http.post("/v1/completions", json=body)
                        ok, what = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:120]}"
                        produced = r.json()["usage"]["completion_tokens"] if ok else 0
                except httpx.HTTPError as e:
                    ok, what, produced = False, f"{type(e).__name__}: {e}", 0
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    generated[0] += produced
                    if not ok:
                        errors.append(what)

    server_before, client_before = cpu_seconds(server_pid) if server_pid else None, cpu_seconds()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    server_after = cpu_seconds(server_pid) if server_pid else None
    server = server_after - server_before if server_before is not None and server_after is not None else None
    client = cpu_seconds() - client_before
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 99),
            "requests_per_s": len(latencies) / wall, "tokens_per_s": generated[0] / wall, "seconds": wall,
            "server_cores": server / wall if server is not None else None, "client_cores": client / wall,
            "server_ms_per_request": 1000 * server / len(latencies) if server is not None else None,
            "client_ms_per_request": 1000 * client / len(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(ROOT / "models"), help="models folder to serve")
    parser.add_argument("--model", default="shakespeare/v2c", help="model id to ask for")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--compare", default=None, metavar="N,N,...",
                        help="several numbers of clients in turn, against one server (e.g. 1,8,32)")
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--concurrent", type=int, default=None, help="the server's --max-concurrent (default: its own)")
    parser.add_argument("--stream", action="store_true", help="streaming requests (server-sent events)")
    parser.add_argument("--compile", action="store_true",
                        help="the server's --compile: decoding steps built ahead of time (the warm-up request "
                             "waits for the build, up to a minute or two the first time)")
    parser.add_argument("--lanes", type=int, default=None, help="the server's --lanes (default: its own)")
    parser.add_argument("--dtype", default="auto", help="the server's --dtype (default auto)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.compare.split(",")] if args.compare else [args.clients]
    proc, url = start_server(Path(args.models), max(counts), args.concurrent, args.compile, args.lanes, args.dtype)
    results = []
    try:
        run(url, args.model, 1, 1, 4, args.stream)  # warm-up: the model loaded, its batch started
        for clients in counts:
            results.append(run(url, args.model, clients, args.requests, args.tokens, args.stream, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    at_once = f"{args.concurrent} at once" if args.concurrent else "the server's default limits"
    at_once += ", --compile" if args.compile else ""
    at_once += f", --lanes {args.lanes}" if args.lanes else ""
    at_once += f", --dtype {args.dtype}" if args.dtype != "auto" else ""
    print(f"requests of {args.tokens} tokens ({args.model}, {'streaming' if args.stream else 'whole answers'}, "
          f"{at_once}), {args.requests} per client:")
    first = results[0]
    for clients, result in zip(counts, results):
        print(f"  {clients:3d} clients: requests {result['requests']}, errors {result['errors']}"
              + (f" (first: {result['first_error']})" if result["errors"] else "")
              + f"; latency p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; "
              f"{result['requests_per_s']:.1f} requests/s, {result['tokens_per_s']:,.0f} tokens/s "
              f"({result['seconds']:.1f} s)"
              + (f"; CPU: the server {result['server_cores']:.2f} cores ({result['server_ms_per_request']:.1f} ms "
                 f"a request), the clients {result['client_cores']:.2f} ({result['client_ms_per_request']:.1f} ms)"
                 if result["server_cores"] is not None else "")
              + (f"; {result['tokens_per_s'] / first['tokens_per_s']:.2f}x the tokens/s, p99 "
                 f"{result['p99_ms'] / first['p50_ms']:.2f}x the first row's p50" if len(results) > 1 else ""))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
