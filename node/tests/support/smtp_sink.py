#!/usr/bin/env python3
"""An SMTP sink for node/tests/support/outside.rs: aiosmtpd (PyPI `aiosmtpd`) on
127.0.0.1:PORT accepting every message and writing it to DIR.

    smtp_sink.py PORT DIR

Message n is written as DIR/n.eml (the bytes as received, CRLF line ends) and
DIR/n.json ({"mail_from", "rcpt_tos", "helo", "peer"}), each renamed into place once whole,
the .json last, so a reader that sees n.json sees both complete. Runs until killed.
"""

import asyncio
import json
import os
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    def _write(self, name, data):
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.directory, name))

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        n = self.count
        self._write("%d.eml" % n, envelope.original_content or envelope.content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "helo": session.host_name,
            "peer": list(session.peer) if session.peer else None,
        }
        self._write("%d.json" % n, json.dumps(meta).encode())
        return "250 OK stored as %d" % n


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    controller = Controller(
        Sink(directory),
        hostname="127.0.0.1",
        port=port,
        server_hostname="sink.test",
        data_size_limit=64 * 1024 * 1024,
        decode_data=False,
    )
    controller.start()
    try:
        asyncio.new_event_loop().run_until_complete(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
