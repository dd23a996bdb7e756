#!/usr/bin/env python3
"""Load test of `moecl serve` (Python standard library only).

    tools/loadtest.py --url http://127.0.0.1:8080 [--pid PID] [--clients 32] [--duration 60]
                      [--lengths 16,64,256] [--max-tokens 32] [--vocab 32000] [--seed 1]

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
weight files).
Exit status 1 if any request failed.
"""
import argparse
import http.client
import json
import random
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


def client(i, args, host, port, deadline, totals):
    rng = random.Random(args.seed * 1000 + i)
    lengths = [int(x) for x in args.lengths.split(",")]
    while time.monotonic() < deadline:
        n = rng.choice(lengths)
        body = {
            "prompt": [rng.randrange(3, args.vocab) for _ in range(n)],
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
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, default=0, help="the server's process id, for its RSS")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--lengths", default="16,64,256", help="prompt lengths, drawn uniformly")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000, help="token ids are drawn from 3..vocab-1")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80

    totals = Totals()
    warm = random.Random(args.seed)
    for n in [int(x) for x in args.lengths.split(",")]:
        try:
            one_request(host, port, {"prompt": [warm.randrange(3, args.vocab) for _ in range(n)], "max_tokens": 2,
                                     "stream": True, "stream_options": {"include_usage": True}}, args.timeout)
        except Exception as e:
            print(f"warm-up request failed: {e}", file=sys.stderr)
            return 1
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

    print(f"clients {args.clients}, {args.duration:.0f} s (wall {wall:.1f} s incl. requests in flight), "
          f"prompt lengths {args.lengths}, max_tokens {args.max_tokens}")
    print(f"requests      {totals.done} done, {totals.done / wall:.2f} /s")
    print(f"TTFT          p50 {percentile(totals.ttft, 50) * 1e3:.0f} ms, p99 {percentile(totals.ttft, 99) * 1e3:.0f} ms")
    print(f"tokens        {totals.tokens} generated, {totals.tokens / wall:.1f} tok/s aggregate; "
          f"{totals.prompt_tokens} prompt tokens, {totals.prompt_tokens / wall:.1f} /s")
    print(f"errors        {len(totals.errors)}")
    for e in totals.errors[:10]:
        print(f"  {e}")
    if args.pid:
        print(f"server RSS    start {rss0 / 1024:.1f} MiB, end {rss1 / 1024:.1f} MiB "
              f"(anonymous: start {anon0 / 1024:.1f} MiB, end {anon1 / 1024:.1f} MiB)")
    return 1 if totals.errors else 0


if __name__ == "__main__":
    sys.exit(main())
