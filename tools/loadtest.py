#!/usr/bin/env python3
"""Load test of `moecl serve` (Python standard library only).

The issue's measurement, one command (it starts the server, measures, stops it):

    tools/loadtest.py --serve "build/moecl serve -m mini-q4_K_M.gguf -t 2 --parallel 32 -c 512" \
                      --clients 32 --duration 60 --lengths 16,64,256 --max-tokens 32

Or against a server already running:

    tools/loadtest.py --url http://127.0.0.1:8080 [--pid PID] [--clients 32] [--duration 60]
                      [--lengths 16,64,256] [--max-tokens 32] [--shared-prefix 0] [--vocab 32000] [--seed 1]

--serve CMD runs CMD with --host 127.0.0.1 --port 0 appended, reads the port
from its first line, measures its RSS, and stops it at the end (its stderr
goes to ours).

Each of --clients threads sends streaming /v1/completions requests, one after
another, until --duration seconds have passed: a prompt of token ids whose
length is drawn from --lengths (ids drawn from 3..vocab-1), max_tokens
--max-tokens, stream_options.include_usage. Reported: requests finished per
second, time to first token (the first SSE chunk with text or a token) p50 and
p99, aggregate completion tokens per second (from each response's usage),
errors (an HTTP status other than 200, a broken stream, or no usage), and
with --pid the server's resident set at the start (after one warm-up request
of each length, which pages the mapped weights in) and at the end: VmRSS and
its anonymous part, RssAnon (heap, KV cache, scratch; the rest is the mapped
weight files). From the server's /metrics before and after: prompt tokens read,
reused from a cache and shared between slots, preemptions, requests the KV pool
could not hold.
--shared-prefix N starts every prompt with the same N ids (a system prompt:
the KV blocks it fills are shared by the slots).
Exit status 1 if any request failed.
"""
import argparse
import http.client
import json
import random
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse


def rss_kib(pid, key="VmRSS:"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.ttft = []
        self.done = 0
        self.tokens = 0
        self.prompt_tokens = 0
        self.errors = []


def one_request(host, port, body, timeout):
    """Returns (ttft seconds, completion tokens, prompt tokens) or raises."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        t0 = time.monotonic()
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read(300)!r}")
        ttft = None
        usage = None
        saw_done = False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                saw_done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            if ttft is None and chunk.get("choices"):
                ttft = time.monotonic() - t0
        if not saw_done or usage is None:
            raise RuntimeError("stream ended without [DONE] or usage")
        return (ttft if ttft is not None else time.monotonic() - t0, usage["completion_tokens"],
                usage["prompt_tokens"])
    finally:
        conn.close()


def metrics(host, port):
    """The server's counters (name{labels} -> value); {} if /metrics cannot be read."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
    except (OSError, http.client.HTTPException):
        return {}
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            m[name] = float(value)
    return m


def start_server(cmd):
    """Start `moecl serve` on a free loopback port: (process, port)."""
    argv = shlex.split(cmd) + ["--host", "127.0.0.1", "--port", "0"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(600, p.kill)  # loading a large model may take minutes, not forever
    timer.start()
    line = p.stdout.readline()
    timer.cancel()
    if "listening on http://127.0.0.1:" not in line:
        p.kill()
        p.wait()
        raise RuntimeError(f"the server did not start: {line!r}")
    return p, int(line.rsplit(":", 1)[1])


def stop_server(p):
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def client(i, args, host, port, deadline, totals):
    rng = random.Random(args.seed * 1000 + i)
    lengths = [int(x) for x in args.lengths.split(",")]
    prefix = [random.Random(args.seed).randrange(3, args.vocab) for _ in range(args.shared_prefix)]
    while time.monotonic() < deadline:
        n = rng.choice(lengths)
        body = {
            "prompt": prefix + [rng.randrange(3, args.vocab) for _ in range(n)],
            "max_tokens": args.max_tokens,
            "temperature": 0.8,
            "seed": rng.randrange(1 << 30),
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            ttft, toks, ptoks = one_request(host, port, body, args.timeout)
            with totals.lock:
                totals.ttft.append(ttft)
                totals.done += 1
                totals.tokens += toks
                totals.prompt_tokens += ptoks
        except Exception as e:  # every failure is counted and reported
            with totals.lock:
                totals.errors.append(f"client {i}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", metavar="CMD", help="start this `moecl serve` command line and measure it")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, default=0, help="the server's process id, for its RSS")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--lengths", default="16,64,256", help="prompt lengths, drawn uniformly")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000, help="token ids are drawn from 3..vocab-1")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--shared-prefix", type=int, default=0, help="ids every prompt starts with")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.serve:
        try:
            server, port = start_server(args.serve)
        except (OSError, RuntimeError) as e:
            print(f"loadtest: {e}", file=sys.stderr)
            return 1
        host, args.pid = "127.0.0.1", server.pid
        try:
            return run(args, host, port)
        finally:
            stop_server(server)
    u = urllib.parse.urlparse(args.url)
    return run(args, u.hostname, u.port or 80)


def run(args, host, port):

    totals = Totals()
    warm = random.Random(args.seed)
    for n in [int(x) for x in args.lengths.split(",")]:
        try:
            one_request(host, port, {"prompt": [warm.randrange(3, args.vocab) for _ in range(n)], "max_tokens": 2,
                                     "stream": True, "stream_options": {"include_usage": True}}, args.timeout)
        except Exception as e:
            print(f"warm-up request failed: {e}", file=sys.stderr)
            return 1
    m0 = metrics(host, port)
    rss0 = rss_kib(args.pid) if args.pid else -1
    anon0 = rss_kib(args.pid, "RssAnon:") if args.pid else -1
    t0 = time.monotonic()
    deadline = t0 + args.duration
    threads = [threading.Thread(target=client, args=(i, args, host, port, deadline, totals))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0  # requests in flight at the deadline finish first
    rss1 = rss_kib(args.pid) if args.pid else -1
    anon1 = rss_kib(args.pid, "RssAnon:") if args.pid else -1
    m1 = metrics(host, port)

    print(f"clients {args.clients}, {args.duration:.0f} s (wall {wall:.1f} s incl. requests in flight), "
          f"prompt lengths {args.lengths}, max_tokens {args.max_tokens}")
    print(f"requests      {totals.done} done, {totals.done / wall:.2f} /s")
    print(f"TTFT          p50 {percentile(totals.ttft, 50) * 1e3:.0f} ms, p99 {percentile(totals.ttft, 99) * 1e3:.0f} ms")
    print(f"tokens        {totals.tokens} generated, {totals.tokens / wall:.1f} tok/s aggregate; "
          f"{totals.prompt_tokens} prompt tokens, {totals.prompt_tokens / wall:.1f} /s")
    print(f"errors        {len(totals.errors)}")
    for e in totals.errors[:10]:
        print(f"  {e}")
    if m0 and m1:
        d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
        held, budget = m1.get('moecl_kv_cells{state="held"}', 0), m1.get('moecl_kv_cells{state="budget"}', 0)
        print(f"server        prompt tokens {d.get('moecl_prompt_tokens_total', 0):.0f} read, "
              f"{d.get('moecl_prompt_tokens_cached_total', 0):.0f} reused "
              f"({d.get('moecl_prompt_tokens_shared_total', 0):.0f} from other slots' blocks); "
              f"{d.get('moecl_preemptions_total', 0):.0f} preemptions, "
              f"{d.get('moecl_kv_full_total', 0):.0f} requests the KV pool could not hold; "
              f"KV cells held at the end {held:.0f} of {budget:.0f}")
    if args.pid:
        print(f"server RSS    start {rss0 / 1024:.1f} MiB, end {rss1 / 1024:.1f} MiB "
              f"(anonymous: start {anon0 / 1024:.1f} MiB, end {anon1 / 1024:.1f} MiB)")
    return 1 if totals.errors else 0


if __name__ == "__main__":
    sys.exit(main())
