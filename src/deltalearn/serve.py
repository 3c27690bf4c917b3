"""A small OpenAI-compatible server over the transformers backend: `python -m deltalearn.serve --model NAME`.

At scale, generation runs on a real serving engine (vLLM, SGLang, TGI, llama.cpp) and deltalearn talks to it
through `generate_responses(..., backend="openai", base_url=...)`. This module is the same protocol on the
stdlib HTTP server so that path can be run and tested anywhere: POST /v1/chat/completions (no streaming) and
GET /v1/models. Concurrent requests are gathered for a few milliseconds and decoded as one batch.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Engine:
    """Loads one model and decodes queued requests in small batches on one worker thread."""

    def __init__(self, model_name: str, *, batch_size: int = 8, precision: str = "auto", wait_s: float = 0.02):
        from deltalearn.models import load_model

        self.name = model_name
        self.model, self.tok = load_model(model_name)
        self.model.eval()
        self.batch_size, self.precision, self.wait_s = batch_size, precision, wait_s
        self.q: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._loop, daemon=True)
        self.worker.start()

    def submit(self, messages: list[dict], *, max_tokens: int, temperature: float, top_p: float, seed: int,
               repetition_penalty: float = 1.0, top_k: int = 0, min_p: float = 0.0) -> Future:
        from deltalearn.tokenize import prompt_ids

        fut: Future = Future()
        ids = prompt_ids(self.tok, messages)  # raises DataError on bad messages, before queueing
        self.q.put((ids, (max_tokens, temperature, top_p, seed, repetition_penalty, top_k, min_p), fut))
        return fut

    def default(self, key: str, neutral):
        """A field the request omits gets the model's generation_config.json value, as a vLLM server does."""
        value = getattr(self.model.generation_config, key, None)
        return neutral if value is None else value

    def _loop(self) -> None:
        from deltalearn.generate import _decode_batch

        while True:
            items = [self.q.get()]
            deadline = time.time() + self.wait_s
            while len(items) < self.batch_size:
                try:
                    items.append(self.q.get(timeout=max(0.0, deadline - time.time())))
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for it in items:  # only requests with the same decoding settings share a batch
                groups.setdefault(it[1], []).append(it)
            for (max_tokens, temperature, top_p, seed, penalty, top_k, min_p), group in groups.items():
                try:
                    outs = _decode_batch(self.model, self.tok, [g[0] for g in group], max_new_tokens=max_tokens,
                                         temperature=temperature, top_p=top_p, precision=self.precision, seed=seed,
                                         repetition_penalty=penalty, top_k=top_k, min_p=min_p)
                    for (ids, _, fut), out in zip(group, outs):
                        fut.set_result((len(ids), *out))
                except Exception as e:  # noqa: BLE001 - delivered to each waiting request as a 500
                    for _, _, fut in group:
                        fut.set_exception(e)


def make_handler(engine: Engine):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request would flood test logs
            pass

        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error", "code": code}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                return self._send(200, {"object": "list", "data": [{"id": engine.name, "object": "model",
                                                                     "owned_by": "deltalearn"}]})
            if self.path.rstrip("/") in ("/health", "/v1/health"):
                return self._send(200, {"status": "ok"})
            self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                assert isinstance(req, dict)
            except (ValueError, AssertionError):
                return self._error(400, "body must be a JSON object")
            if req.get("model") not in (None, engine.name):
                return self._error(404, f"model '{req.get('model')}' is not served here (serving '{engine.name}')")
            if req.get("stream"):
                return self._error(400, "streaming is not supported by deltalearn.serve")
            try:
                max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 256)
                temperature = float(req.get("temperature", 1.0) if req.get("temperature") is not None else 1.0)
                top_p = float(req.get("top_p") if req.get("top_p") is not None else 1.0)
                seed = int(req.get("seed") or 0)
                extra = {k: float(req[k]) if req.get(k) is not None else engine.default(k, neutral)
                         for k, neutral in (("repetition_penalty", 1.0), ("min_p", 0.0))}
                top_k = int(req["top_k"]) if req.get("top_k") is not None else int(engine.default("top_k", 0))
                fut = engine.submit(req.get("messages"), max_tokens=max_tokens, temperature=temperature,
                                    top_p=top_p, seed=seed, top_k=max(top_k, 0), **extra)  # vLLM's -1 = off = 0
            except (TypeError, ValueError) as e:  # DataError is a ValueError
                return self._error(400, str(e))
            try:
                n_prompt, text, n_tokens, truncated = fut.result()
            except Exception as e:  # noqa: BLE001
                return self._error(500, f"generation failed: {e}")
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": engine.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if truncated else "stop"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_tokens,
                          "total_tokens": n_prompt + n_tokens},
            })

    return Handler


def serve(model_name: str, *, host: str = "127.0.0.1", port: int = 8000, batch_size: int = 8,
          precision: str = "auto") -> ThreadingHTTPServer:
    """Start serving in a background thread; returns the server (`.server_address`, `.shutdown()`)."""
    engine = Engine(model_name, batch_size=batch_size, precision=precision)
    server = ThreadingHTTPServer((host, port), make_handler(engine))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deltalearn.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = p.parse_args(argv)
    server = serve(args.model, host=args.host, port=args.port, batch_size=args.batch_size, precision=args.precision)
    host, port = server.server_address[:2]
    print(f"serving {args.model} on http://{host}:{port}/v1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
