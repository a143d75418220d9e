"""A TokenReview endpoint for benchmarks: answers POST /apis/authentication.k8s.io/v1/tokenreviews
like an API server that authenticates every token as system:serviceaccount:bench:app, for the
audiences asked. Usage: tokenreview.py PORT CERT KEY (serves HTTPS, HTTP/1.1 keep-alive)."""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Review(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        spec = request.get("spec", {})
        answer = json.dumps({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {
                "authenticated": True,
                "user": {"username": "system:serviceaccount:bench:app", "uid": "bench-uid",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
                "audiences": spec.get("audiences") or ["kinko"],
            },
        }).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = ThreadingHTTPServer(("127.0.0.1", port), Review)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
