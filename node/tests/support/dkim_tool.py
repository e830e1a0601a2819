#!/usr/bin/env python3
"""DKIM signing and verification with dkimpy (PyPI `dkimpy`, `pynacl` for ed25519), an
implementation independent of the gateway's mail-auth, for node/tests/support/outside.rs.

    dkim_tool.py sign MESSAGE SELECTOR DOMAIN KEYFILE rsa|ed25519 [HEADER,HEADER...]
        prints the signed message (the DKIM-Signature header prepended) on stdout.
        KEYFILE: RSA private key PEM, or the ed25519 seed in base64.
    dkim_tool.py verify MESSAGE DNS_PORT [INDEX]
        looks the key up with dnspython at 127.0.0.1:DNS_PORT and prints one JSON line:
        {"pass": bool, "reason": str, "domain": str|null, "selector": str|null,
         "signatures": int}; INDEX picks which DKIM-Signature (default 0, the topmost).
"""

import json
import logging
import sys

import dkim
import dns.resolver


class Collect(logging.Handler):
    """Keeps dkimpy's log lines: its failure reasons are only logged."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def resolver_for(port):
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.timeout = 3
    r.lifetime = 5

    def get_txt(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            answer = r.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return get_txt


def sign(args):
    path, selector, domain, keyfile, algo = args[:5]
    headers = args[5].split(",") if len(args) > 5 and args[5] else None
    message = open(path, "rb").read()
    key = open(keyfile, "rb").read().strip()
    algorithm = b"ed25519-sha256" if algo == "ed25519" else b"rsa-sha256"
    kwargs = {}
    if headers:
        kwargs["include_headers"] = [h.encode() for h in headers]
    sig = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        signature_algorithm=algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        **kwargs,
    )
    sys.stdout.buffer.write(sig + message)


def verify(args):
    path, port = args[0], int(args[1])
    index = int(args[2]) if len(args) > 2 else 0
    message = open(path, "rb").read()
    log = Collect()
    logger = logging.getLogger("dkim_tool")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log)
    d = dkim.DKIM(message, logger=logger)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    result = {"pass": False, "reason": "", "domain": None, "selector": None, "signatures": count}
    if count == 0:
        result["reason"] = "no DKIM-Signature header"
    else:
        try:
            ok = d.verify(idx=index, dnsfunc=resolver_for(port))
        except Exception as e:  # a malformed message or key: a failure with its reason
            ok = False
            log.lines.append("%s: %s" % (type(e).__name__, e))
        result["pass"] = bool(ok)
        if d.domain is not None:
            result["domain"] = d.domain.decode()
        if d.selector is not None:
            result["selector"] = d.selector.decode()
        # dkimpy logs its hashes as debug lines; the rest are the reasons it failed.
        debug = ("sig:", "sig=", "bh:", "hashed:", "signed:")
        errors = [l for l in log.lines if not l.startswith(debug) and " valid: " not in l]
        if ok:
            result["reason"] = "signature verified (d=%s)" % result["domain"]
        else:
            result["reason"] = "; ".join(errors) or "signature did not verify (signed headers altered, or another key)"
    print(json.dumps(result))


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    {"sign": sign, "verify": verify}[cmd](rest)
