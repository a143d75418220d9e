#!/usr/bin/env python3
"""A small HTTP fault proxy for the AWS emulator: forwards requests to --upstream, answering a
share of them (--throttle, 0..1) the way DynamoDB does when it throttles, without forwarding,
and a share of BatchWriteItem calls (--unprocessed) with every item returned unprocessed.

GET /__proxy/stats answers {"forwarded": N, "throttled": M, "unprocessed": U}. Prints "listening on PORT" once
ready (--port 0 picks a free port)."""

import argparse
import http.client
import http.server
import json
import random
import sys
import threading

THROTTLED = json.dumps({
    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "message": "The level of configured provisioned throughput for the table was exceeded "
               "(injected by the test fault proxy)",
}).encode()


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stats = {"forwarded": 0, "throttled": 0, "unprocessed": 0}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/__proxy/stats":
            with Proxy.lock:
                body = json.dumps(Proxy.stats).encode()
            return self.reply(200, body, [("Content-Type", "application/json")])
        self.forward()

    def do_POST(self):
        self.forward()

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if random.random() < self.server.throttle:
            with Proxy.lock:
                Proxy.stats["throttled"] += 1
            return self.reply(400, THROTTLED, [
                ("Content-Type", "application/x-amz-json-1.0"),
                ("x-amzn-ErrorType", "ProvisionedThroughputExceededException"),
            ])
        batch = self.headers.get("X-Amz-Target", "").endswith(".BatchWriteItem")
        if batch and random.random() < self.server.unprocessed:
            with Proxy.lock:
                Proxy.stats["unprocessed"] += 1
            items = json.loads(body)["RequestItems"]
            return self.reply(200, json.dumps({"UnprocessedItems": items}).encode(), [
                ("Content-Type", "application/x-amz-json-1.0"),
            ])
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        passed = [(k, v) for k, v in response.getheaders()
                  if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        upstream.close()
        with Proxy.lock:
            Proxy.stats["forwarded"] += 1
        self.reply(response.status, data, passed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--throttle", type=float, default=0.0)
    parser.add_argument("--unprocessed", type=float, default=0.0)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Proxy)
    server.daemon_threads = True
    server.upstream = args.upstream
    server.throttle = args.throttle
    server.unprocessed = args.unprocessed
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
