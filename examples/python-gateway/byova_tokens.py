"""Valid Webex tokens from `byova serve`'s local token endpoint, with Python's standard library.

The daemon keeps every token fresh (one refresh per expiry, shared by every replica); this
module only asks it over its Unix socket, so the gateway holds no refresh token and runs no
refresh loop:

    tokens = ByovaTokens("/run/byova/token.sock")
    granted = tokens.token(org="63b02f90-9cc6-43b8-aa6d-cad425ac554c", min_valid=60)
    headers = {"Authorization": f"Bearer {granted['access_token']}"}
"""

import http.client
import json
import socket
import urllib.parse


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a Unix socket."""

    def __init__(self, path, timeout=10.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class TokenError(Exception):
    """The daemon could not give a token: `code` is its stable error code
    (`org_not_registered`, `reauthorization_required`, `store_unavailable`,
    `budget_exhausted` with `retry_after` seconds, ...)."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.retry_after = retry_after


class ByovaTokens:
    """Asks the daemon listening on `socket_path` for tokens."""

    def __init__(self, socket_path, timeout=10.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def token(self, org=None, min_valid=0):
        """A dict with `access_token`, `token_type`, `expires_at` (RFC 3339) and `expires_in`
        (seconds): the Integration's when `org` is None, else the org's. With `min_valid`, a
        token with at least that many seconds left (refreshed first when needed)."""
        if org is None:
            path = "/v1/integration/token"
        else:
            path = f"/v1/orgs/{urllib.parse.quote(org, safe='')}/token"
        if min_valid:
            path += f"?min_valid={int(min_valid)}"
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        body = json.loads(raw or b"{}")
        if resp.status != 200:
            retry_after = resp.getheader("Retry-After")
            raise TokenError(resp.status, body.get("error"), body.get("message"),
                             int(retry_after) if retry_after else None)
        return body
