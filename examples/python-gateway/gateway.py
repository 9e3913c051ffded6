"""A gateway's use of byova, standard library only: take an org's token from `byova serve`'s
socket and call the Webex API with it.

    python3 gateway.py --socket /run/byova/token.sock --org ORG [--api https://webexapis.com/v1]
"""

import argparse
import json
import sys
import urllib.request

from byova_tokens import ByovaTokens, TokenError


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="byova serve --token-listen unix:PATH")
    parser.add_argument("--org", help="the customer org (the Integration's token without it)")
    parser.add_argument("--api", default="https://webexapis.com/v1")
    args = parser.parse_args()
    try:
        granted = ByovaTokens(args.socket).token(org=args.org, min_valid=30)
    except TokenError as e:
        print(f"no token: {e}", file=sys.stderr)
        return 1
    request = urllib.request.Request(
        f"{args.api}/people/me",
        headers={"Authorization": f"Bearer {granted['access_token']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        me = json.load(resp)
    print(json.dumps({"status": resp.status, "expires_in": granted["expires_in"], "id": me.get("id")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
