"""The language server on large specs (tracker issue 24): request latency over stdio on the
3,000-chained-parameter spec, and what the analysis cache holds after ten large networks.

    PYTHONPATH=. python bench/bench_lsp.py latency     # hover/definition over stdio
    PYTHONPATH=. python bench/bench_lsp.py cache       # RSS after ten ~850k-connection networks
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time


def chain(n: int = 3000) -> str:
    params = ", ".join(["p0=1"] + [f"p{i}=p{i - 1}+1" for i in range(1, n)])
    return f"network chain({params}) {{\n    input 3x32x32\n    dense layers=2 growth=p{n - 1}\n    head classes=10\n}}\n"


def _send(proc, message: dict) -> None:
    body = json.dumps(message).encode()
    proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    proc.stdin.flush()


def _reply(proc, msg_id: int) -> dict:
    while True:
        length = None
        while (line := proc.stdout.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        message = json.loads(proc.stdout.read(length))
        if message.get("id") == msg_id and "method" not in message:
            return message


def latency() -> None:
    text = chain()
    line0, line2 = text.split("\n")[0], text.split("\n")[2]
    proc = subprocess.Popen([sys.executable, "-m", "densedsl", "lsp"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    _send(proc, {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                 "params": {"processId": None, "rootUri": None, "capabilities": {}}})
    _reply(proc, 0)
    _send(proc, {"jsonrpc": "2.0", "method": "initialized", "params": {}})
    uri = "file:///tmp/chain.dense"
    _send(proc, {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri, "languageId": "densedsl", "version": 1, "text": text}}})
    requests = [
        ("first hover (waits for the analysis)", "textDocument/hover", {"line": 2, "character": 5}),
        ("hover on the dense line", "textDocument/hover", {"line": 2, "character": 5}),
        ("hover on a parameter", "textDocument/hover", {"line": 0, "character": line0.index("p1500=") + 1}),
        ("definition of p2999", "textDocument/definition", {"line": 2, "character": line2.index("p2999") + 1}),
    ]
    print(f"spec: {len(text):,} bytes, 3,000 chained parameters")
    for i, (what, method, position) in enumerate(requests, 1):
        start = time.perf_counter()
        _send(proc, {"jsonrpc": "2.0", "id": i, "method": method,
                     "params": {"textDocument": {"uri": uri}, "position": position}})
        _reply(proc, i)
        print(f"{what}: {time.perf_counter() - start:.3f} s")
    _send(proc, {"jsonrpc": "2.0", "id": 99, "method": "shutdown"})
    _reply(proc, 99)
    _send(proc, {"jsonrpc": "2.0", "method": "exit"})
    proc.wait()


def cache() -> None:
    from densedsl.lsp.document import AnalysisCache, analyze_text

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    store, base, start = AnalysisCache(), rss_mib(), time.perf_counter()
    for i in range(10):
        spec = (f"network big{i} {{\n    input 3x32x32\n    dense layers={1300 + i} growth=1 "
                "bottleneck=off\n    head classes=10\n}\n")
        analyze_text(spec, "big.dense", store)
        gc.collect()
    print(f"ten networks of ~850k connections: {len(store.entries)} cached, "
          f"RSS +{rss_mib() - base:.0f} MiB, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    {"latency": latency, "cache": cache}[sys.argv[1] if len(sys.argv) > 1 else "latency"]()
