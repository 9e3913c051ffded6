"""A gateway's use of byova, standard library only, both ways:

1. take an org's token from `byova serve`'s socket and call the Webex API with it;
2. call the API through `byova serve`'s injecting proxy, holding no token at all: the
   proxy's address replaces the API's, the daemon's shared secret is the bearer, and
   `X-Byova-Org` names the customer org.

    python3 gateway.py --socket /run/byova/token.sock --org ORG \\
        [--api https://webexapis.com/v1] [--proxy http://127.0.0.1:8091/v1 --secret-file FILE] \\
        [--compare N]

Prints one JSON object: each way's status and the person's org; with `--compare N`, the
latency of N sequential calls each way (kept-alive connections), p50 and p99 in ms.
"""

import argparse
import http.client
import json
import sys
import time
import urllib.parse

from byova_tokens import ByovaTokens, TokenError


class Api:
    """GETs on one kept-alive connection to a base URL like http://host:port/v1."""

    def __init__(self, base, headers):
        url = urllib.parse.urlsplit(base)
        connection = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self.conn = connection(url.netloc, timeout=10)
        self.prefix = url.path.rstrip("/")
        self.headers = headers

    def get(self, path):
        self.conn.request("GET", f"{self.prefix}/{path}", headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def latencies(api, path, n):
    """p50 and p99 (ms) of `n` sequential GETs of `path`; every one must answer 200."""
    took = []
    for _ in range(n):
        started = time.perf_counter()
        status, body = api.get(path)
        took.append((time.perf_counter() - started) * 1000.0)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
    took.sort()
    return {"p50_ms": took[len(took) // 2], "p99_ms": took[min(len(took) - 1, len(took) * 99 // 100)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True, help="byova serve --token-listen unix:PATH")
    parser.add_argument("--org", help="the customer org (the Integration's token without it)")
    parser.add_argument("--api", default="https://webexapis.com/v1")
    parser.add_argument("--proxy", help="byova serve --proxy-listen, as a base URL: http://IP:PORT/v1")
    parser.add_argument("--secret-file", help="byova serve --token-secret-file (the proxy's bearer)")
    parser.add_argument("--compare", type=int, default=0, help="time N calls each way")
    args = parser.parse_args()
    if args.proxy and not args.secret_file:
        parser.error("--proxy needs --secret-file: the proxy asks for the daemon's shared secret")

    try:
        granted = ByovaTokens(args.socket).token(org=args.org, min_valid=30)
    except TokenError as e:
        print(f"no token: {e}", file=sys.stderr)
        return 1
    direct = Api(args.api, {"Authorization": f"Bearer {granted['access_token']}"})
    status, body = direct.get("people/me")
    report = {"direct": {"status": status, "orgId": json.loads(body).get("orgId"), "expires_in": granted["expires_in"]}}

    proxied = None
    if args.proxy:
        with open(args.secret_file, encoding="utf-8") as f:
            secret = f.read().strip()
        headers = {"Authorization": f"Bearer {secret}"}
        if args.org:
            headers["X-Byova-Org"] = args.org
        proxied = Api(args.proxy, headers)
        status, body = proxied.get("people/me")
        report["proxied"] = {"status": status, "orgId": json.loads(body).get("orgId")}

    if args.compare:
        report["direct"].update(latencies(direct, "people/me", args.compare))
        if proxied:
            report["proxied"].update(latencies(proxied, "people/me", args.compare))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
