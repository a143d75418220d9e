#!/usr/bin/env python3
"""The AWS emulator (moto) answering one request at a time, for the tests.

moto's DynamoDB transactions are not atomic across its server threads: a transaction checks its
conditions, writes, and on a failed condition restores a copy of the whole table taken before.
Under the threaded `moto_server`, two racing conditional writes can both succeed and a failed
transaction can undo another one's write. DynamoDB itself serialises conflicting writes; serving
one request at a time gives the emulator that guarantee, so a race the tests start between
kinko replicas is decided the way DynamoDB decides it.

Usage: moto_serial.py [--port N]  (0 picks a free port); prints "listening on PORT" once ready.
"""

import argparse
import os

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server


class Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", args.port, app, threaded=False, request_handler=Quiet)
    os.environ["MOTO_PORT"] = str(server.server_port)
    print(f"listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
