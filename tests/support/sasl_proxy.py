#!/usr/bin/env python3
"""sasl_proxy.py - SASL-terminating (optionally TLS- and mutual-TLS-terminating) front for a
plaintext, unauthenticated Kafka-API broker such as tansu. Python 3.8+ stdlib only.

Why it exists: the tansu 0.6.0 the tests run cannot authenticate a librdkafka client by itself
(its memory storage keeps no SCRAM credentials, PLAIN is not compiled in, OAUTHBEARER is not
handled, and --cert/--key cannot be used together). This stands in for the broker's side of
SASL and TLS exactly as a client sees it; everything after authentication is the real broker.

Per client connection:
  * ApiVersions (key 18) is forwarded to the upstream broker, reply passed back unchanged
    (tansu advertises SaslHandshake 0-1 and SaslAuthenticate 0-2).
  * SaslHandshake (17) v0/v1 and SaslAuthenticate (36) v0-v2 are answered by the proxy.
    Handshake v0 (raw, unframed tokens) is refused: librdkafka uses v1 whenever offered.
  * Any other request before authentication closes the connection (what Kafka does).
  * After success, bytes are piped both ways untouched. session_lifetime_ms=0 (no KIP-368
    re-authentication, same as Kafka's default connections.max.reauth.ms=0).

Mechanisms: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (users from --users FILE / $SASL_PROXY_USERS,
"name:password" per line or comma separated), OAUTHBEARER (unsecured JWT, alg "none", like
Kafka's OAuthBearerUnsecuredValidatorCallbackHandler: needs "sub" and a future "exp"; if
--oauth-principals is given, sub must be one of them), and AWS MSK IAM tokens on OAUTHBEARER
(base64url of a SigV4-presigned kafka-cluster:Connect URL, as aws-msk-iam-sasl-signer makes
them): the signature is recomputed here, independently of the relay's signer, from the keys in
--msk-iam-keys / $SASL_PROXY_MSK_KEYS ("ACCESS_KEY_ID:SECRET[:SESSION_TOKEN]", comma
separated), and the token's own expiry is checked. The principal is the access key id.

--max-connection-age N closes every authenticated connection N seconds after it was accepted,
so clients must authenticate again (with whatever token or keys they hold by then).

The upstream broker must advertise the PROXY's address (tansu --advertised-listener-url),
otherwise clients bypass the proxy after the bootstrap metadata request.
"""
import argparse, asyncio, base64, calendar, hashlib, hmac, json, logging, os, secrets, ssl, struct, time

log = logging.getLogger("sasl_proxy")

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
ERR_NONE, ERR_UNSUPPORTED_VERSION, ERR_ILLEGAL_SASL_STATE = 0, 35, 34
ERR_UNSUPPORTED_SASL_MECHANISM, ERR_SASL_AUTHENTICATION_FAILED = 33, 58
SCRAM = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


# ---------------------------------------------------------------- wire helpers
def uvarint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]; pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def enc_uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse_header(payload):
    """-> api_key, api_version, correlation_id, offset of body (handles header v1 and v2)."""
    api_key, api_version, corr = struct.unpack_from(">hhi", payload, 0)
    (cid_len,) = struct.unpack_from(">h", payload, 8)
    pos = 10 + max(cid_len, 0)
    flexible = (api_key == API_VERSIONS and api_version >= 3) or \
               (api_key == SASL_AUTHENTICATE and api_version >= 2)
    if flexible:  # request header v2: tagged fields
        ntags, pos = uvarint(payload, pos)
        for _ in range(ntags):
            _, pos = uvarint(payload, pos)
            size, pos = uvarint(payload, pos)
            pos += size
    return api_key, api_version, corr, pos


async def read_frame(reader):
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def frame(b):
    return struct.pack(">i", len(b)) + b


def handshake_response(corr, error, mechanisms):
    body = struct.pack(">ih", corr, error) + struct.pack(">i", len(mechanisms))
    for m in mechanisms:
        body += struct.pack(">h", len(m)) + m.encode()
    return frame(body)


def authenticate_response(corr, version, error, message, auth_bytes):
    if version >= 2:  # flexible: response header v1 + compact fields
        body = struct.pack(">i", corr) + b"\x00" + struct.pack(">h", error)
        if message is None:
            body += b"\x00"
        else:
            m = message.encode(); body += enc_uvarint(len(m) + 1) + m
        body += enc_uvarint(len(auth_bytes) + 1) + auth_bytes
        body += struct.pack(">q", 0) + b"\x00"
        return frame(body)
    body = struct.pack(">ih", corr, error)
    if message is None:
        body += struct.pack(">h", -1)
    else:
        m = message.encode(); body += struct.pack(">h", len(m)) + m
    body += struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        body += struct.pack(">q", 0)  # session_lifetime_ms: 0 = no re-authentication
    return frame(body)


def authenticate_request_bytes(payload, version, pos):
    if version >= 2:
        n, pos = uvarint(payload, pos)
        return payload[pos:pos + n - 1]
    (n,) = struct.unpack_from(">i", payload, pos)
    return payload[pos + 4:pos + 4 + n]


# ---------------------------------------------------------------- credentials
class Users:
    def __init__(self, pairs, iterations):
        self.passwords = dict(pairs)
        self.scram = {}
        for mech, h in SCRAM.items():
            for user, pw in self.passwords.items():
                salt = secrets.token_bytes(32)
                salted = hashlib.pbkdf2_hmac(h().name, pw.encode(), salt, iterations)
                client_key = hmac.new(salted, b"Client Key", h).digest()
                self.scram[(mech, user)] = dict(
                    salt=salt, iterations=iterations, stored_key=h(client_key).digest(),
                    server_key=hmac.new(salted, b"Server Key", h).digest())

    @staticmethod
    def load(path, env):
        text = ""
        if path:
            with open(path) as f:
                text += f.read()
        if env:
            text += "\n" + env.replace(",", "\n")
        pairs = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, pw = line.partition(":")
                pairs.append((name, pw))
        return pairs


class AuthFailed(Exception):
    pass


class PlainSession:
    def __init__(self, users, _):
        self.users = users

    def step(self, data):
        parts = data.split(b"\x00")
        if len(parts) != 3:
            raise AuthFailed("malformed PLAIN message")
        authzid, user, pw = (p.decode("utf-8", "replace") for p in parts)
        expected = self.users.passwords.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), pw.encode())
        if not ok or (authzid and authzid != user):
            raise AuthFailed("Authentication failed: Invalid username or password")
        return b"", user


class ScramSession:
    def __init__(self, users, mech):
        self.users, self.mech, self.h = users, mech, SCRAM[mech]
        self.state = 0

    def step(self, data):
        msg = data.decode("utf-8", "replace")
        if self.state == 0:
            if not msg.startswith(("n,", "y,")):
                raise AuthFailed("channel binding not supported")
            i = msg.index(",", msg.index(",") + 1)
            self.gs2, self.client_first_bare = msg[:i + 1], msg[i + 1:]
            attrs = dict(a.split("=", 1) for a in self.client_first_bare.split(",") if "=" in a)
            self.user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
            self.cred = self.users.scram.get((self.mech, self.user))
            if self.cred is None or "r" not in attrs:
                raise AuthFailed("Authentication failed during authentication due to invalid "
                                 f"credentials with SASL mechanism {self.mech}")
            self.nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18)).decode()
            self.server_first = "r=%s,s=%s,i=%d" % (
                self.nonce, base64.b64encode(self.cred["salt"]).decode(), self.cred["iterations"])
            self.state = 1
            return self.server_first.encode(), None
        if self.state == 1:
            self.state = 2
            without_proof, _, proof = msg.rpartition(",p=")
            attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
            if attrs.get("r") != self.nonce or \
                    base64.b64decode(attrs.get("c", "")) != self.gs2.encode():
                raise AuthFailed("Invalid client final message")
            auth_msg = ",".join([self.client_first_bare, self.server_first, without_proof]).encode()
            sig = hmac.new(self.cred["stored_key"], auth_msg, self.h).digest()
            try:
                proof = base64.b64decode(proof)
            except Exception:
                proof = b""
            client_key = bytes(a ^ b for a, b in zip(proof, sig)) if len(proof) == len(sig) else b""
            if not hmac.compare_digest(self.h(client_key).digest(), self.cred["stored_key"]):
                raise AuthFailed("Authentication failed during authentication due to invalid "
                                 f"credentials with SASL mechanism {self.mech}")
            server_sig = hmac.new(self.cred["server_key"], auth_msg, self.h).digest()
            return b"v=" + base64.b64encode(server_sig), self.user
        raise AuthFailed("unexpected SCRAM message")


def sigv4_key(secret, date, region, service):
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def msk_iam_principal(token, keys):
    """The access key id an MSK IAM token was signed with, or AuthFailed."""
    from urllib.parse import urlsplit, parse_qsl, quote
    try:
        url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True)
        q = dict(params)
    except Exception:
        raise AuthFailed("invalid OAUTHBEARER token")
    host = parts.hostname or ""
    if parts.scheme != "https" or not (host.startswith("kafka.") and host.endswith(".amazonaws.com")):
        raise AuthFailed(f"MSK IAM: unexpected host {host!r}")
    if q.get("Action") != "kafka-cluster:Connect" or q.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" \
            or q.get("X-Amz-SignedHeaders") != "host":
        raise AuthFailed("MSK IAM: not a kafka-cluster:Connect presigned URL")
    akid, date, region, service, term = q.get("X-Amz-Credential", "////").split("/")
    region_in_host = host[len("kafka."):-len(".amazonaws.com")]
    if service != "kafka-cluster" or term != "aws4_request" or region != region_in_host:
        raise AuthFailed("MSK IAM: credential scope does not match the host")
    try:
        signed_at = calendar.timegm(time.strptime(q.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise AuthFailed("MSK IAM: no X-Amz-Date")
    expires = int(q.get("X-Amz-Expires", "0"))
    now = time.time()
    if not 0 < expires <= 900 or signed_at > now + 300 or signed_at + expires <= now:
        raise AuthFailed("MSK IAM: token expired or not yet valid")
    if q["X-Amz-Date"][:8] != date:
        raise AuthFailed("MSK IAM: date does not match the credential scope")
    key = keys.get(akid)
    if key is None:
        raise AuthFailed(f"MSK IAM: unknown access key {akid}")
    if key["token"] is not None and q.get("X-Amz-Security-Token") != key["token"]:
        raise AuthFailed("MSK IAM: session token does not match the access key")
    enc = lambda v: quote(v, safe="-_.~")
    signed = sorted((k, v) for k, v in params if k not in ("X-Amz-Signature", "User-Agent"))
    canonical_query = "&".join(f"{enc(k)}={enc(v)}" for k, v in signed)
    port = f":{parts.port}" if parts.port else ""
    canonical = "\n".join(["GET", parts.path or "/", canonical_query, f"host:{host}{port}", "",
                           "host", hashlib.sha256(b"").hexdigest()])
    scope = f"{date}/{region}/kafka-cluster/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", q["X-Amz-Date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    expected = hmac.new(sigv4_key(key["secret"], date, region, "kafka-cluster"), to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, q.get("X-Amz-Signature", "")):
        raise AuthFailed("MSK IAM: signature does not match")
    return akid


def load_msk_keys(spec):
    keys = {}
    for entry in (e.strip() for e in (spec or "").split(",")):
        if not entry:
            continue
        akid, secret, token = (entry.split(":") + [""])[:3]
        keys[akid] = {"secret": secret, "token": token or None}
    return keys


class OAuthBearerSession:
    def __init__(self, users, _):
        self.principals = users.oauth_principals
        self.msk_keys = users.msk_keys

    def step(self, data):
        try:
            gs2, *kvs = data.split(b"\x01")
            kv = dict(p.split(b"=", 1) for p in kvs if b"=" in p)
            scheme, token = kv[b"auth"].decode().split(" ", 1)
            assert scheme.lower() == "bearer"
        except Exception:
            raise AuthFailed("invalid OAUTHBEARER token")
        if token.count(".") != 2:
            if not self.msk_keys:
                raise AuthFailed("invalid OAUTHBEARER token")
            return b"", msk_iam_principal(token, self.msk_keys)
        try:
            hdr, payload, _sig = token.split(".")
            pad = lambda s: s + "=" * (-len(s) % 4)
            header = json.loads(base64.urlsafe_b64decode(pad(hdr)))
            claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
        except Exception:
            raise AuthFailed("invalid OAUTHBEARER token")
        now = time.time()
        if header.get("alg") != "none" or "sub" not in claims or \
                float(claims.get("exp", 0)) <= now:
            raise AuthFailed("invalid_token (need alg=none, sub, exp in the future)")
        if self.principals and claims["sub"] not in self.principals:
            raise AuthFailed("invalid_token (principal not allowed)")
        return b"", claims["sub"]


MECHS = {"PLAIN": PlainSession, "SCRAM-SHA-256": ScramSession,
         "SCRAM-SHA-512": ScramSession, "OAUTHBEARER": OAuthBearerSession}


# ---------------------------------------------------------------- connection
async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(creader, cwriter, args, users):
    peer = cwriter.get_extra_info("peername")
    ureader = uwriter = None
    mech = session = None
    principal = None

    async def upstream():
        nonlocal ureader, uwriter
        if uwriter is None:
            ureader, uwriter = await asyncio.open_connection(args.upstream_host, args.upstream_port)
        return ureader, uwriter

    try:
        if args.no_sasl:
            principal = "tls"
        while principal is None:
            payload = await read_frame(creader)
            api_key, ver, corr, pos = parse_header(payload)
            log.debug("%s pre-auth request key=%d v=%d corr=%d", peer, api_key, ver, corr)
            if api_key == API_VERSIONS:
                ur, uw = await upstream()
                uw.write(frame(payload)); await uw.drain()
                cwriter.write(frame(await read_frame(ur)))
            elif api_key == SASL_HANDSHAKE:
                (n,) = struct.unpack_from(">h", payload, pos)
                requested = payload[pos + 2:pos + 2 + n].decode()
                if ver == 0:
                    log.info("%s SaslHandshake v0 (unframed tokens) not supported", peer)
                    cwriter.write(handshake_response(corr, ERR_UNSUPPORTED_VERSION, args.mechanisms))
                elif requested in args.mechanisms:
                    mech, session = requested, MECHS[requested](users, requested)
                    cwriter.write(handshake_response(corr, ERR_NONE, args.mechanisms))
                else:
                    log.info("%s unsupported mechanism %r", peer, requested)
                    cwriter.write(handshake_response(corr, ERR_UNSUPPORTED_SASL_MECHANISM,
                                                     args.mechanisms))
            elif api_key == SASL_AUTHENTICATE:
                if session is None:
                    cwriter.write(authenticate_response(corr, ver, ERR_ILLEGAL_SASL_STATE,
                                                        "SaslHandshake first", b""))
                    await cwriter.drain(); break
                token = authenticate_request_bytes(payload, ver, pos)
                try:
                    out, principal = session.step(token)
                except AuthFailed as e:
                    log.info("%s %s authentication failed: %s", peer, mech, e)
                    cwriter.write(authenticate_response(corr, ver, ERR_SASL_AUTHENTICATION_FAILED,
                                                        str(e), b""))
                    await cwriter.drain(); break
                cwriter.write(authenticate_response(corr, ver, ERR_NONE, None, out))
                if principal is not None:
                    log.info("%s authenticated %r via %s (SaslAuthenticate v%d)", peer, principal, mech, ver)
            else:
                log.info("%s request key=%d before authentication: closing", peer, api_key)
                break
            await cwriter.drain()
        if principal is None:
            return
        ur, uw = await upstream()
        both = asyncio.gather(pipe(creader, uw), pipe(ur, cwriter))
        if args.max_connection_age:
            try:
                await asyncio.wait_for(both, args.max_connection_age)
            except asyncio.TimeoutError:
                log.info("%s connection of %r past its age: closing", peer, principal)
        else:
            await both
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
        log.debug("%s closed: %r", peer, e)
    except Exception:
        log.exception("%s error", peer)
    finally:
        for w in (cwriter, uwriter):
            if w is not None:
                try:
                    w.close()
                except Exception:
                    pass


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:9092", help="host:port for clients")
    p.add_argument("--upstream", default="127.0.0.1:19092", help="plaintext broker host:port")
    p.add_argument("--users", help="file of name:password lines (also $SASL_PROXY_USERS)")
    p.add_argument("--mechanisms", default="PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER")
    p.add_argument("--scram-iterations", type=int, default=4096)
    p.add_argument("--oauth-principals", default="", help="comma list; empty = any sub")
    p.add_argument("--tls-cert"); p.add_argument("--tls-key")
    p.add_argument("--tls-client-ca", help="require a client certificate signed by this CA (mTLS)")
    p.add_argument("--no-sasl", action="store_true", help="TLS only: pipe every connection at once")
    p.add_argument("--msk-iam-keys", default=os.environ.get("SASL_PROXY_MSK_KEYS", ""),
                   help="AKID:SECRET[:SESSION_TOKEN],... accepted for MSK IAM tokens")
    p.add_argument("--max-connection-age", type=float, default=0,
                   help="seconds after which an authenticated connection is closed (0: never)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args()
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(message)s")
    args.mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    args.upstream_host, _, up = args.upstream.rpartition(":"); args.upstream_port = int(up)
    host, _, port = args.listen.rpartition(":")
    users = Users(Users.load(args.users, os.environ.get("SASL_PROXY_USERS")), args.scram_iterations)
    users.oauth_principals = {s for s in args.oauth_principals.split(",") if s}
    users.msk_keys = load_msk_keys(args.msk_iam_keys)
    ctx = None
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.tls_client_ca)
    server = await asyncio.start_server(lambda r, w: handle(r, w, args, users), host, int(port), ssl=ctx)
    log.warning("listening on %s (%s) -> %s, mechanisms %s, %d users", args.listen,
                "SASL_SSL" if ctx else "SASL_PLAINTEXT", args.upstream, args.mechanisms,
                len(users.passwords))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
