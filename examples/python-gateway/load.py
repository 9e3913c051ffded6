"""Asks the token endpoint for the tokens of many orgs as fast as it can, from a few threads,
for a while; prints JSON: requests, errors, latency percentiles, and every distinct token with
the last time it was served (for the caller to check against the issuer's expiry).

    python3 load.py --socket PATH --orgs ORG1,ORG2,... --seconds 60 [--threads 4]
"""

import argparse
import json
import threading
import time

from byova_tokens import ByovaTokens, TokenError


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--orgs", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    orgs = [o for o in args.orgs.split(",") if o]
    client = ByovaTokens(args.socket)
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    latencies, errors, tokens = [], [], {}

    def worker(offset):
        mine, i = [], offset
        while time.monotonic() < deadline:
            org = orgs[i % len(orgs)]
            i += 1
            started = time.monotonic()
            try:
                granted = client.token(org=org)
            except (TokenError, OSError) as e:
                with lock:
                    errors.append(f"{org}: {e}")
                continue
            served_ms = int(time.time() * 1000)
            mine.append(time.monotonic() - started)
            with lock:
                seen = tokens.setdefault(granted["access_token"], {"org": org, "last_served_ms": 0})
                seen["last_served_ms"] = max(seen["last_served_ms"], served_ms)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def percentile(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else None

    print(json.dumps({
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": args.seconds,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "tokens": [{"token": t, **v} for t, v in tokens.items()],
    }))


if __name__ == "__main__":
    main()
