#!/usr/bin/env python3
"""Drive `moecl serve` over loopback HTTP (Python standard library only).

    test_serve.py MOECL_EXE TOKENIZER_JSON WORK_DIR [--openai]

Writes a tiny random model with the Mistral tokenizer, starts the server on a
free 127.0.0.1 port (--port 0; the port is read from its first line), and
checks: bodies and SSE framing of both endpoints, usage counts, stop strings,
every error status (400, 401, 404, 413, 503 with Retry-After), a client
disconnecting mid-stream (its slot is freed), a client that does not read
(others are not held up), 16 clients at once, a prompt sharing KV blocks with
another slot's running request (usage and metrics count them), and the
backend, placement and KV options `moecl run` has (bad values refused, an
expert profile and an F16 pool of a given size used). --openai runs the same
kind of requests through the PyPI `openai` client instead (exit 77 without it).
Every wait is bounded.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

KEY = "test-key-123"
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, file=sys.stderr)


class Server:
    def __init__(self, exe, model, *args):
        self.model_dir = model
        cmd = [exe, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", "-t", "1", *args]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = None
        # the first stdout line names the port; bounded by the watchdog below
        timer = threading.Timer(60, self.p.kill)
        timer.start()
        line = self.p.stdout.readline()
        timer.cancel()
        if "listening on http://127.0.0.1:" not in line:
            err = self.p.stderr.read() if self.p.poll() is not None else ""
            raise RuntimeError("server did not start: %r %s" % (line, err))
        self.port = int(line.rsplit(":", 1)[1])

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, key=KEY, raw=None, headers=None):
        c = self.conn()
        h = {"Content-Type": "application/json"}
        if key:
            h["Authorization"] = "Bearer " + key
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = r.status, dict(r.getheaders()), r.read()
        c.close()
        return out

    def post(self, path, body, **kw):
        status, headers, data = self.request("POST", path, body, **kw)
        return status, headers, data

    def metrics(self):
        status, _, data = self.request("GET", "/metrics", key=None)
        check(status == 200, "GET /metrics is 200")
        m = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                m[name] = float(value)
        return m

    def stop(self):
        self.p.terminate()
        try:
            rc = self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait(10)
            check(False, "server stops within 20 s of SIGTERM")
        check(rc == 0, "server exits 0 on SIGTERM (got %s)" % rc)


def parse_sse(data):
    """Check the framing and return the decoded events (without [DONE])."""
    text = data.decode("utf-8")
    check(text.endswith("data: [DONE]\n\n"), "SSE ends with data: [DONE]")
    events = []
    blocks = text.split("\n\n")
    check(blocks[-1] == "", "SSE events end with a blank line")
    for b in blocks[:-1]:
        check(b.startswith("data: ") and "\n" not in b, "SSE event is one data: line: %r" % b[:80])
        payload = b[6:]
        if payload == "[DONE]":
            continue
        events.append(json.loads(payload))
    return events


def wait_until(pred, seconds, what):
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    check(False, what)
    return False


# ------------------------------------------------------------------------------------------------


def test_basics(s):
    status, _, data = s.request("GET", "/health", key=None)
    check(status == 200 and json.loads(data)["status"] == "ok", "GET /health")
    status, _, data = s.request("GET", "/v1/models")
    models = json.loads(data)
    check(status == 200 and models["object"] == "list" and models["data"][0]["id"] == "model",
          "GET /v1/models: %s" % data[:200])
    status, _, _ = s.request("GET", "/nowhere")
    check(status == 404, "unknown path is 404")
    status, _, _ = s.request("GET", "/v1/completions")
    check(status == 405, "GET on a POST endpoint is 405")


def test_auth(s):
    body = {"prompt": "Hi", "max_tokens": 2}
    for key in (None, "wrong-key", KEY + "x"):
        status, _, data = s.post("/v1/completions", body, key=key)
        err = json.loads(data)["error"]
        check(status == 401 and err["code"] == "invalid_api_key" and err["type"], "key %r gives 401" % key)
    status, _, _ = s.request("GET", "/v1/models", key=None)
    check(status == 401, "/v1/models needs the key")


def test_completions(s):
    chat = {"model": "anything", "messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Tell me a story."}],
            "max_tokens": 12, "temperature": 0, "some_unknown_field": {"x": [1, 2]}}
    status, headers, data = s.post("/v1/chat/completions", chat)
    check(status == 200, "chat: 200 (%s)" % data[:200])
    r = json.loads(data)
    check(r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-"), "chat: object and id")
    ch = r["choices"][0]
    check(ch["index"] == 0 and ch["message"]["role"] == "assistant", "chat: choice shape")
    u = r["usage"]
    check(u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"],
          "chat: usage %s" % u)
    check(ch["finish_reason"] == ("length" if u["completion_tokens"] == 12 else "stop"), "chat: finish_reason")
    check(u["prompt_tokens"] > 10, "chat: the rendered prompt has the [INST] tokens (%d)" % u["prompt_tokens"])
    check("application/json" in headers.get("Content-Type", ""), "chat: JSON content type")

    # The same request streamed gives the same text, split into chunks.
    chat_s = dict(chat, stream=True, stream_options={"include_usage": True})
    status, headers, data = s.post("/v1/chat/completions", chat_s)
    check(status == 200 and headers.get("Content-Type") == "text/event-stream", "chat stream: 200 SSE")
    ev = parse_sse(data)
    check(ev[0]["choices"][0]["delta"].get("role") == "assistant", "chat stream: first chunk has the role")
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev if e["choices"])
    check(text == ch["message"]["content"], "chat stream: same text as the plain response: %r vs %r"
          % (text, ch["message"]["content"]))
    finals = [e for e in ev if e["choices"] and e["choices"][0]["finish_reason"]]
    check(len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == ch["finish_reason"],
          "chat stream: one chunk with the finish reason")
    check(ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == u["completion_tokens"] and
          ev[-1]["usage"]["prompt_tokens"] == u["prompt_tokens"], "chat stream: usage chunk last")
    check(ev[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == u["prompt_tokens"] - 1,
          "chat stream: the repeated prompt came from the cache")
    check(all(e["object"] == "chat.completion.chunk" and e["id"] == ev[0]["id"] for e in ev), "chat stream: ids")

    # Without include_usage there is no usage chunk.
    status, _, data = s.post("/v1/chat/completions", dict(chat, stream=True))
    ev = parse_sse(data)
    check(all(e["choices"] and "usage" not in e for e in ev), "stream without include_usage has no usage")

    # Completions: a string prompt and the same prompt as ids.
    comp = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    status, _, data = s.post("/v1/completions", comp)
    r = json.loads(data)
    check(status == 200 and r["object"] == "text_completion" and r["id"].startswith("cmpl-"), "completion: 200")
    text = r["choices"][0]["text"]
    u = r["usage"]
    check(u["prompt_tokens"] == 5 and u["completion_tokens"] == 10, "completion: usage %s" % u)  # <s> Once upon a time
    ids = [1, 5713, 3714, 264, 727]  # the same prompt, as Mistral's tokenizer writes it
    status, _, data = s.post("/v1/completions", {"prompt": ids, "max_tokens": 10, "temperature": 0})
    r2 = json.loads(data)
    check(status == 200 and r2["choices"][0]["text"] == text, "completion from ids = from text")
    status, _, data = s.post("/v1/completions", dict(comp, stream=True))
    ev = parse_sse(data)
    check("".join(e["choices"][0]["text"] for e in ev) == text, "completion stream: same text")
    check(ev[-1]["choices"][0]["finish_reason"] == "length", "completion stream: finish length")

    # Stop strings: the text ends before the first occurrence; nothing of it is sent.
    if len(text) >= 8:
        stop = text[len(text) // 2: len(text) // 2 + 3]
        want = text[:text.index(stop)]
        for stream in (False, True):
            status, _, data = s.post("/v1/completions", dict(comp, stop=["zzzq", stop], stream=stream))
            if stream:
                ev = parse_sse(data)
                got = "".join(e["choices"][0]["text"] for e in ev)
                fin = ev[-1]["choices"][0]["finish_reason"]
            else:
                r = json.loads(data)
                got, fin = r["choices"][0]["text"], r["choices"][0]["finish_reason"]
            check(got == want and fin == "stop", "stop %r (stream %s): %r, want %r" % (stop, stream, got, want))
    else:
        check(False, "the random model wrote too little text to test stop strings: %r" % text)

    # Seeded sampling is reproducible.
    samp = {"prompt": "Hello", "max_tokens": 8, "temperature": 1.2, "top_k": 0, "top_p": 0.9, "min_p": 0.0,
            "seed": 1234}
    a = json.loads(s.post("/v1/completions", samp)[2])["choices"][0]["text"]
    b = json.loads(s.post("/v1/completions", samp)[2])["choices"][0]["text"]
    check(a == b, "same seed, same text")


def test_errors(s):
    def expect(path, raw, status, param=None, what=""):
        st, _, data = s.post(path, None, raw=raw if isinstance(raw, bytes) else json.dumps(raw).encode())
        try:
            err = json.loads(data)["error"]
            ok = isinstance(err["message"], str) and err["message"] and "type" in err and "code" in err
        except (ValueError, KeyError, TypeError):
            ok, err = False, {}
        check(st == status and ok, "%s: %s -> %d %s (want %d)" % (what, str(raw)[:60], st, data[:150], status))
        if param is not None:
            check(err.get("param") == param, "%s: param %r, want %r" % (what, err.get("param"), param))

    C, P = "/v1/chat/completions", "/v1/completions"
    msgs = [{"role": "user", "content": "hi"}]
    expect(C, b"{not json", 400, what="malformed JSON")
    expect(C, b"", 400, what="empty body")
    expect(C, [1, 2], 400, what="body not an object")
    expect(C, {"messages": []}, 400, "messages", "empty messages")
    expect(C, {}, 400, "messages", "no messages")
    expect(C, {"messages": "hi"}, 400, "messages", "messages a string")
    expect(C, {"messages": [{"role": "user"}]}, 400, "messages", "message without content")
    expect(C, {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages", "unknown role")
    expect(C, {"messages": [{"role": "assistant", "content": "x"}]}, 400, what="no user message")
    expect(C, {"messages": msgs, "max_tokens": 0}, 400, "max_tokens", "max_tokens 0")
    expect(C, {"messages": msgs, "max_tokens": -3}, 400, "max_tokens", "max_tokens < 0")
    expect(C, {"messages": msgs, "max_tokens": "10"}, 400, "max_tokens", "max_tokens a string")
    expect(C, {"messages": msgs, "max_tokens": 1.5}, 400, "max_tokens", "max_tokens fractional")
    expect(C, {"messages": msgs, "temperature": "hot"}, 400, "temperature", "temperature a string")
    expect(C, {"messages": msgs, "top_p": 2}, 400, "top_p", "top_p > 1")
    expect(C, {"messages": msgs, "top_k": 0.5}, 400, "top_k", "top_k fractional")
    expect(C, {"messages": msgs, "seed": "x"}, 400, "seed", "seed a string")
    expect(C, {"messages": msgs, "stop": 5}, 400, "stop", "stop a number")
    expect(C, {"messages": msgs, "stop": [""]}, 400, "stop", "empty stop string")
    expect(C, {"messages": msgs, "n": 2}, 400, "n", "n = 2")
    expect(C, {"messages": msgs, "stream": "yes"}, 400, "stream", "stream a string")
    expect(C, {"messages": msgs, "model": 7}, 400, "model", "model a number")
    expect(P, {"prompt": 5}, 400, "prompt", "prompt a number")
    expect(P, {"prompt": []}, 400, "prompt", "empty prompt")
    expect(P, {"prompt": [1, -2]}, 400, "prompt", "negative id")
    expect(P, {"prompt": [1, 99999999]}, 400, what="id outside the vocabulary")
    expect(P, {"prompt": list(range(1, 5000))}, 400, "prompt", "prompt longer than the context")
    expect(C, {"messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages",
           "chat longer than the context")
    expect(P, {"prompt": "x" * (1 << 20) + "y"}, 413, what="body over 1 MiB")
    st, _, data = s.post(P, None, raw=b"{" * 100000)
    check(st == 400, "deeply nested JSON: 400 (%d)" % st)


def read_some_sse(sock, n_events, seconds):
    """Read from a raw socket until n_events SSE events arrived."""
    sock.settimeout(seconds)
    buf = b""
    end = time.time() + seconds
    while buf.count(b"\n\n") < n_events + 1 and time.time() < end:  # +1: the headers
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def raw_stream(s, body):
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode() +
                 b"\r\n\r\n" + data)
    return sock


def test_disconnect(s):
    before = s.metrics()
    sock = raw_stream(s, {"prompt": "Once", "max_tokens": 100000, "stream": True, "temperature": 0, "ignore_eos": True})
    buf = read_some_sse(sock, 3, 30)
    check(b"200 OK" in buf.split(b"\r\n")[0] and buf.count(b"data: ") >= 3, "long stream started")
    sock.close()
    ok = wait_until(lambda: s.metrics()["moecl_requests_running"] == 0, 30,
                    "a client that disconnects mid-stream frees its slot")
    m = s.metrics()
    if ok:
        gen = m["moecl_completion_tokens_total"] - before["moecl_completion_tokens_total"]
        check(gen < 3000, "the disconnected request stopped early (%d tokens)" % gen)
    check(m["moecl_client_disconnects_total"] >= before["moecl_client_disconnects_total"] + 1,
          "the disconnect is counted")

    # The same for a plain (non-stream) request.
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    data = json.dumps({"prompt": "Once", "max_tokens": 100000, "temperature": 0, "ignore_eos": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                 b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    wait_until(lambda: s.metrics()["moecl_requests_running"] == 1, 30, "plain long request runs")
    sock.close()
    wait_until(lambda: s.metrics()["moecl_requests_running"] == 0, 30,
               "a client that disconnects while waiting frees its slot")


def test_slow_reader(s):
    """A client that does not read its stream does not hold up the others."""
    sock = raw_stream(s, {"prompt": "Once", "max_tokens": 3000, "stream": True, "temperature": 0, "ignore_eos": True})
    t0 = time.time()
    for _ in range(3):
        status, _, data = s.post("/v1/completions", {"prompt": "Hello", "max_tokens": 8})
        check(status == 200, "request next to a slow reader")
    check(time.time() - t0 < 20, "requests next to a slow reader finish")
    sock.close()
    wait_until(lambda: s.metrics()["moecl_requests_running"] == 0, 20, "slow reader's slot freed")


def test_many_clients(s):
    results = [None] * 16

    def client(i):
        try:
            body = {"prompt": "Story number %d:" % i, "max_tokens": 6 + i % 5, "temperature": 0}
            if i % 2:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            status, _, data = s.post("/v1/completions", body)
            if i % 2:
                ev = parse_sse(data)
                results[i] = (status, ev[-1]["usage"]["completion_tokens"])
            else:
                results[i] = (status, json.loads(data)["usage"]["completion_tokens"])
        except Exception as e:  # noqa: BLE001 - reported as a failure below
            results[i] = ("error", repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, r in enumerate(results):
        check(r is not None and r[0] == 200 and r[1] <= 6 + i % 5 and r[1] >= 1,
              "client %d of 16: %s" % (i, r))
    m = s.metrics()
    check(m["moecl_requests_running"] == 0 and m["moecl_queue_depth"] == 0, "all 16 done")
    # Steps decoded several sequences: more tokens than steps.
    check(m["moecl_batch_tokens_sum"] > m["moecl_batch_tokens_count"], "requests shared decode steps")
    check_routing_metrics(s, m)


def check_routing_metrics(s, m):
    """Every token decoded (prompt and generated) is routed to K experts in every layer,
    with renormalised (Mixtral) weights that sum to 1 per token."""
    with open(os.path.join(s.model_dir, "config.json")) as f:
        cfg = json.load(f)
    L, E, K = cfg["num_hidden_layers"], cfg["num_local_experts"], cfg["num_experts_per_tok"]
    decoded = m["moecl_batch_tokens_sum"]
    for layer in range(L):
        tok = [m.get('moecl_expert_tokens_total{layer="%d",expert="%d"}' % (layer, e)) for e in range(E)]
        wt = [m.get('moecl_expert_weight_total{layer="%d",expert="%d"}' % (layer, e)) for e in range(E)]
        if None in tok or None in wt:
            check(False, "/metrics has moecl_expert_tokens_total and _weight_total for layer %d, experts 0..%d"
                  % (layer, E - 1))
            return
        check(sum(tok) == K * decoded, "layer %d: %d tokens routed = %d x %d decoded" % (layer, sum(tok), K, decoded))
        check(abs(sum(wt) - decoded) <= 1e-4 * decoded + 1e-3,
              "layer %d: router weights sum to %.4f for %d tokens" % (layer, sum(wt), decoded))
        check(max(tok) < sum(tok), "layer %d: more than one expert used" % layer)
    check('moecl_expert_tokens_total{layer="%d",expert="0"}' % L not in m, "no layer beyond the model's")


def test_shared_prefix(s):
    """b starts with the 40 ids a started with, while a runs in another slot: b takes
    a's 2 whole KV blocks (32 positions) instead of reading them."""
    before = s.metrics()
    prefix = list(range(100, 140))
    sock = raw_stream(s, {"prompt": prefix + [200, 201, 202, 203, 204], "max_tokens": 2000, "stream": True,
                          "ignore_eos": True})
    try:
        events = read_some_sse(sock, 1, 30)  # a's prompt is read, its blocks entered in the table
        check(len(events) >= 1, "a streams")
        status, _, data = s.post("/v1/completions", {"prompt": prefix + [300, 301, 302, 303, 304, 305, 306],
                                                     "max_tokens": 2, "temperature": 0})
        check(status == 200, "b: %d %s" % (status, data[:200]))
        if status == 200:
            u = json.loads(data)["usage"]
            check(u["prompt_tokens"] == 47 and u["prompt_tokens_details"]["cached_tokens"] == 32,
                  "b shares a's 2 blocks: %s" % u)
        m = s.metrics()
        check(m["moecl_prompt_tokens_shared_total"] - before["moecl_prompt_tokens_shared_total"] == 32,
              "metrics count the 32 shared tokens")
    finally:
        sock.close()
    wait_until(lambda: s.metrics()["moecl_requests_running"] == 0, 30, "a ends when its client leaves")


def test_backend_options(exe, model, work):
    """serve takes the placement options of `moecl run` through the same parser."""
    for args, rc, words in [(["--placement", "nowhere"], 2, "unknown placement nowhere (auto, experts, dense)"),
                            (["--kv-type", "q4"], 2, "unknown KV cache type q4"),
                            (["--kv-cells", "0"], 2, "--kv-cells: '0' is not a whole number from 1"),
                            (["--expert-profile"], 2, "needs a value"),
                            (["--expert-profile", os.path.join(work, "missing.profile")], 1, "routing frequencies")]:
        r = subprocess.run([exe, "serve", "-m", model, "--port", "0", *args], capture_output=True, text=True,
                           timeout=60)
        check(r.returncode == rc and words in r.stderr,
              "serve %s: exit %d (%d expected), stderr %r" % (" ".join(args), r.returncode, rc, r.stderr[-300:]))
    h = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, timeout=60)
    for opt in ["--placement", "--expert-profile", "--calibrate", "--gpu-mem", "--device", "--kv-type", "--kv-cells"]:
        check(opt in h.stdout, "serve --help lists %s" % opt)
    profile = os.path.join(work, "routing.profile")
    r = subprocess.run([exe, "stats", "-m", model, "-p", "Once upon a time there was a test. " * 8,
                        "--save-profile", profile, "-t", "1"], capture_output=True, text=True, timeout=120)
    check(r.returncode == 0 and os.path.exists(profile), "moecl stats --save-profile: %s" % r.stderr[-300:])
    s = Server(exe, model, "--placement", "experts", "--expert-profile", profile, "--backend", "cpu",
               "--kv-type", "f16", "--kv-cells", "512", "--api-key", KEY)
    try:
        status, _, data = s.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4})
        check(status == 200 and json.loads(data)["usage"]["completion_tokens"] == 4,
              "a request with a profile and an F16 pool: %d %s" % (status, data[:200]))
        m = s.metrics()
        check(m.get('moecl_kv_cells{state="budget"}') == 512, "the pool has the 512 cells asked for")
    finally:
        s.stop()


def test_queue_full(exe, model):
    s = Server(exe, model, "--parallel", "1", "--queue", "1", "-c", "32768", "--api-key", KEY)
    try:
        body = {"prompt": "Once", "max_tokens": 32000, "stream": True, "ignore_eos": True}
        socks = [raw_stream(s, body)]
        wait_until(lambda: s.metrics()["moecl_requests_running"] == 1, 30, "one request runs")
        socks.append(raw_stream(s, body))
        wait_until(lambda: s.metrics()["moecl_queue_depth"] == 1, 30, "one request waits")
        status, headers, data = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        check(status == 503 and headers.get("Retry-After") == "1" and json.loads(data)["error"]["code"] == "queue_full",
              "queue full: 503 with Retry-After (%d %s)" % (status, data[:100]))
        for k in socks:
            k.close()
        wait_until(lambda: (lambda m: m["moecl_requests_running"] == 0 and m["moecl_queue_depth"] == 0)(s.metrics()),
                   30, "closing both frees the slot and the queue")
        status, _, _ = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        check(status == 200, "served again after the queue emptied")
    finally:
        s.stop()


def test_openai(s):
    try:
        import openai
    except ImportError:
        print("test_serve: SKIP: the PyPI openai package is not installed", file=sys.stderr)
        return 77
    client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % s.port, api_key=KEY, max_retries=0, timeout=60)
    models = client.models.list()
    check(models.data[0].id == "model", "openai: models.list")
    r = client.chat.completions.create(model="model", messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=8, temperature=0)
    check(r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 8, "openai: chat")
    parts = []
    usage = None
    for chunk in client.chat.completions.create(model="model", messages=[{"role": "user", "content": "Hello"}],
                                                max_tokens=8, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    check("".join(parts) == r.choices[0].message.content, "openai: streamed chat = plain chat")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, "openai: stream usage")
    c = client.completions.create(model="model", prompt="Once upon a time", max_tokens=5, temperature=0)
    check(c.usage.prompt_tokens == 5 and len(c.choices) == 1, "openai: completions")
    try:
        client.chat.completions.create(model="model", messages=[], max_tokens=4)
        check(False, "openai: empty messages raises")
    except openai.BadRequestError:
        pass
    bad = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % s.port, api_key="nope", max_retries=0)
    try:
        bad.models.list()
        check(False, "openai: a wrong key raises")
    except openai.AuthenticationError:
        pass
    return 0


def main():
    if len(sys.argv) < 4:
        print("usage: test_serve.py MOECL_EXE TOKENIZER_JSON WORK_DIR [--openai]", file=sys.stderr)
        return 1
    exe, tokenizer, work = sys.argv[1:4]
    use_openai = "--openai" in sys.argv[4:]
    if use_openai:
        try:
            import openai  # noqa: F401
        except ImportError:
            print("test_serve: SKIP: the PyPI openai package is not installed", file=sys.stderr)
            return 77
    model = os.path.join(work, "model")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    subprocess.run([exe, "generate", model, "--preset", "tiny", "--vocab", "32000", "--seed", "7"], check=True,
                   timeout=120, stderr=subprocess.DEVNULL)
    shutil.copy(tokenizer, os.path.join(model, "tokenizer.json"))

    s = Server(exe, model, "--parallel", "4", "--queue", "32", "--api-key", KEY, "-n", "64", "-c", "4096")
    try:
        if use_openai:
            rc = test_openai(s)
            if rc:
                return rc
        else:
            test_basics(s)
            test_auth(s)
            test_completions(s)
            test_errors(s)
            test_disconnect(s)
            test_slow_reader(s)
            test_many_clients(s)
            test_shared_prefix(s)
    finally:
        s.stop()
    if not use_openai:
        test_queue_full(exe, model)
        test_backend_options(exe, model, work)
    shutil.rmtree(work, ignore_errors=True)
    print("test_serve: %d failures" % len(FAILURES), file=sys.stderr)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
