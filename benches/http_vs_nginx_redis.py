#!/usr/bin/env python3
"""fsdb over HTTP, with the loopback floor beside it (issue 5; docs/benchmarks.md).

Run by benches/http_vs_nginx_redis.sh, which installs wrk, nginx and redis and builds fsdb. Measures, in
one run on this machine, each with keep-alive over 127.0.0.1:

  * fsdb GET /v1/features: one random entity (of 10k), its 12 reference features, latest
    (the serving path) and as of a random time in the data (the point-in-time path);
  * fsdb POST /v1/streams/clicks/events: batches of 1,000 events, acknowledged durable;
  * nginx returning a static 64-byte JSON reply: the cost of HTTP on loopback here;
  * redis GET of a 64-byte value (redis-benchmark): a key-value store's floor;

with 1 and 32 connections, and prints requests/s, p50, p99 and the ratios.
Every loop is bounded: wrk runs for a fixed time, redis-benchmark for a fixed count.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

SECONDS = int(os.environ.get("FSDB_BENCH_SECONDS", "10"))
ENTITIES = 10_000  # scale S
FEATURES = [
    "card_txn_count_1m", "card_txn_count_1h", "card_amount_sum_1d", "card_amount_avg_7d",
    "card_amount_max_1d", "card_amount_min_7d", "card_last_city", "card_merchants_7d",
    "card_amount_stddev_7d", "card_txn_count_lifetime", "user_clicks_1h", "user_pages_1d",
]
PAYLOAD = '{"entity":"cust1","features":{"card_txn_count_1h":3,"x":125.25}}'
assert len(PAYLOAD) == 64, len(PAYLOAD)
DAY_MS = 86_400_000


# The ingest requests (shared with benches/http_ingest.sh).
INGEST_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http_ingest.lua")


def run(*args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs).stdout


def wait_http(url, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {deadline_s}s")


def to_ms(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url, connections, script, work):
    threads = min(connections, 2)
    out = run("wrk", f"-t{threads}", f"-c{connections}", f"-d{SECONDS}s", "--latency",
              "-s", script, url, cwd=work)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise SystemExit(f"wrk saw failures against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\n\s+50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\n\s+99%\s+(\S+)", out).group(1))
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def redis_get(port, connections):
    requests = 200_000 if connections == 1 else 1_000_000
    out = run("redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
              "-c", str(connections), "-n", str(requests), "--csv")
    header, row = [line.replace('"', "").split(",") for line in out.strip().splitlines()[-2:]]
    values = dict(zip(header, row))
    return {"rps": float(values["rps"]), "p50_ms": float(values["p50_latency_ms"]),
            "p99_ms": float(values["p99_latency_ms"])}


def write_scripts(work, start_ms, end_ms):
    names = ",".join(FEATURES)
    with open(os.path.join(work, "latest.lua"), "w") as f:
        f.write(f"""
math.randomseed(1)
request = function()
  return wrk.format("GET", "/v1/features?entity=cust" .. math.random(1, {ENTITIES}) .. "&names={names}")
end
""")
    with open(os.path.join(work, "as_of.lua"), "w") as f:
        f.write(f"""
math.randomseed(2)
request = function()
  local t = {start_ms} + math.random(0, {end_ms - start_ms})
  return wrk.format("GET", "/v1/features?entity=cust" .. math.random(1, {ENTITIES}) .. "&names={names}&as_of=" .. t)
end
""")


def main():
    fsdb = sys.argv[1]
    work = tempfile.mkdtemp(prefix="fsdb-http-bench-")
    procs = []
    try:
        # Scale S, ending now: `latest` answers over full windows, as in serving.
        end_ms = int(time.time() * 1000)
        start_ms = end_ms - 30 * DAY_MS
        sample = os.path.join(work, "sample")
        data = os.path.join(work, "data")
        run(fsdb, "generate", "--scale", "S", "--spine-rows", "1", "--start", str(start_ms),
            "--out", sample)
        run(fsdb, "--data", data, "apply", os.path.join(sample, "definitions.toml"))
        for stream in ("transactions", "clicks"):
            run(fsdb, "--data", data, "ingest", "--stream", stream,
                os.path.join(sample, f"{stream}.csv"))
        write_scripts(work, start_ms, end_ms)

        fsdb_port, nginx_port, redis_port = 18711, 18712, 18713
        procs.append(subprocess.Popen(
            [fsdb, "--data", data, "serve", "--listen", f"127.0.0.1:{fsdb_port}"],
            stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{fsdb_port}/healthz")

        os.makedirs(os.path.join(work, "nginx/logs"))
        with open(os.path.join(work, "nginx/nginx.conf"), "w") as f:
            f.write(f"""
worker_processes 2;
daemon off;
pid {work}/nginx/nginx.pid;
error_log {work}/nginx/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx;
  proxy_temp_path {work}/nginx;
  fastcgi_temp_path {work}/nginx;
  uwsgi_temp_path {work}/nginx;
  scgi_temp_path {work}/nginx;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{ default_type application/json; return 200 '{PAYLOAD}'; }}
  }}
}}
""")
        procs.append(subprocess.Popen(
            ["nginx", "-p", os.path.join(work, "nginx"), "-c", os.path.join(work, "nginx/nginx.conf")]))
        wait_http(f"http://127.0.0.1:{nginx_port}/")

        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL))
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(redis_port), "ping"],
                              capture_output=True, text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        run("redis-cli", "-p", str(redis_port), "set", "key:__rand_int__", PAYLOAD)

        fsdb_url = f"http://127.0.0.1:{fsdb_port}"
        # Warm-up, not reported: the server was just opened, so entities are loaded from
        # RocksDB on first use; a serving process answers from resident entities.
        wrk(fsdb_url, 32, "latest.lua", work)
        results = {}
        for connections in (1, 32):
            results[("nginx static 64 B", connections)] = wrk(
                f"http://127.0.0.1:{nginx_port}/", connections, "latest.lua", work)
            results[("redis GET 64 B", connections)] = redis_get(redis_port, connections)
            results[("fsdb latest, 12 features", connections)] = wrk(
                fsdb_url, connections, "latest.lua", work)
            results[("fsdb as_of, 12 features", connections)] = wrk(
                fsdb_url, connections, "as_of.lua", work)
        for connections in (1, 4):
            results[("fsdb ingest, 1,000-event batches", connections)] = wrk(
                fsdb_url, connections, INGEST_SCRIPT, work)
        with urllib.request.urlopen(f"{fsdb_url}/healthz", timeout=10) as response:
            health = json.load(response)

        print(f"\nHTTP over loopback, keep-alive, {SECONDS}s per row (wrk; redis-benchmark for redis)")
        print(f"{'what':36} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>9}")
        for (what, connections), r in results.items():
            floor = results.get(("nginx static 64 B", connections))
            ratio = f"{r['rps'] / floor['rps']:.2f}x" if floor and "ingest" not in what else ""
            print(f"{what:36} {connections:>5} {r['rps']:>10.0f} {r['p50_ms']:>8.3f} "
                  f"{r['p99_ms']:>8.3f} {ratio:>9}")
        for connections in (1, 4):
            r = results[("fsdb ingest, 1,000-event batches", connections)]
            print(f"ingest, {connections} connection(s): {r['rps'] * 1000:,.0f} events/s durable")
        print(f"after the run: /healthz {health}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
