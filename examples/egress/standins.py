"""Loopback stand-ins for the registries a sandbox's toolchains fetch from, on one HTTP port:

  /hello                          plain text (curl)
  /simple/egbpkg/                 a PEP 503 simple index with one wheel (pip)
  /npm/egb-pkg                    an npm registry packument and its tarball (npm)
  /git/egbdep.git/...             a repository over smart HTTP through `git http-backend` (git,
                                  and cargo as a git dependency: it is a crate)
  /goproxy/egb.example/hello/@v/  a GOPROXY module (go)

  python3 standins.py HOST WORKDIR   prints "listening on PORT", then serves until killed.

HOST is the name the sandbox uses in URLs (it must resolve to 127.0.0.1 on this machine); the
server binds 127.0.0.1 only.
"""

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST, WORK = sys.argv[1], sys.argv[2]
ROUTES: dict[str, tuple[str, bytes]] = {}


def wheel() -> bytes:
    files = {
        "egbpkg/__init__.py": b"GREETING = 'hello from the pip stand-in'\n",
        "egbpkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: egbpkg\nVersion: 1.0\n",
        "egbpkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: standins\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    files["egbpkg-1.0.dist-info/RECORD"] = (record + "egbpkg-1.0.dist-info/RECORD,,\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def npm_tarball() -> bytes:
    files = {
        "package/package.json": json.dumps({"name": "egb-pkg", "version": "1.0.0", "main": "index.js"}).encode(),
        "package/index.js": b"module.exports = 'hello from the npm stand-in';\n",
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def go_zip() -> bytes:
    prefix = "egb.example/hello@v1.0.0/"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(prefix + "go.mod", "module egb.example/hello\n\ngo 1.19\n")
        z.writestr(
            prefix + "hello.go",
            'package hello\n\n// Greeting is what the stand-in serves.\nfunc Greeting() string { return "hello from the go stand-in" }\n',
        )
    return out.getvalue()


def git_repo() -> str:
    """A bare repository holding a small crate, for `git clone` and a cargo git dependency."""
    root = os.path.join(WORK, "git")
    src = os.path.join(WORK, "egbdep")
    os.makedirs(os.path.join(src, "src"), exist_ok=True)
    with open(os.path.join(src, "Cargo.toml"), "w") as f:
        f.write('[package]\nname = "egbdep"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n')
    with open(os.path.join(src, "src", "lib.rs"), "w") as f:
        f.write('pub fn greeting() -> &\'static str {\n    "hello from the git stand-in"\n}\n')
    env = {**os.environ, "GIT_AUTHOR_NAME": "s", "GIT_AUTHOR_EMAIL": "s@example.invalid",
           "GIT_COMMITTER_NAME": "s", "GIT_COMMITTER_EMAIL": "s@example.invalid"}
    run = lambda *a, cwd=src: subprocess.run(a, cwd=cwd, env=env, check=True, capture_output=True)
    run("git", "init", "-q", "-b", "main")
    run("git", "add", ".")
    run("git", "commit", "-q", "-m", "egbdep")
    run("git", "clone", "-q", "--bare", src, os.path.join(root, "egbdep.git"), cwd=WORK)
    return root


def routes(port: int) -> None:
    base = f"http://{HOST}:{port}"
    ROUTES["/hello"] = ("text/plain", b"hello from the curl stand-in\n")
    whl = wheel()
    sha = hashlib.sha256(whl).hexdigest()
    ROUTES["/simple/egbpkg/"] = (
        "text/html",
        f'<!DOCTYPE html><html><body><a href="{base}/files/egbpkg-1.0-py3-none-any.whl#sha256={sha}">'
        "egbpkg-1.0-py3-none-any.whl</a></body></html>\n".encode(),
    )
    ROUTES["/files/egbpkg-1.0-py3-none-any.whl"] = ("application/octet-stream", whl)
    tgz = npm_tarball()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    tarball = f"{base}/npm/egb-pkg/-/egb-pkg-1.0.0.tgz"
    ROUTES["/npm/egb-pkg"] = (
        "application/json",
        json.dumps({
            "name": "egb-pkg",
            "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {
                "name": "egb-pkg", "version": "1.0.0", "main": "index.js",
                "dist": {"tarball": tarball, "integrity": integrity, "shasum": hashlib.sha1(tgz).hexdigest()},
            }},
        }).encode(),
    )
    ROUTES["/npm/egb-pkg/-/egb-pkg-1.0.0.tgz"] = ("application/octet-stream", tgz)
    g = "/goproxy/egb.example/hello/@v/"
    ROUTES[g + "list"] = ("text/plain", b"v1.0.0\n")
    ROUTES[g + "v1.0.0.info"] = ("application/json", b'{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}')
    ROUTES[g + "v1.0.0.mod"] = ("text/plain", b"module egb.example/hello\n\ngo 1.19\n")
    ROUTES[g + "v1.0.0.zip"] = ("application/zip", go_zip())


GIT_ROOT = git_repo()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write("standins: %s %s\n" % (self.address_string(), fmt % args))

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith("/git/"):
            return self.git(path[len("/git"):], query)
        if path == "/simple/egbpkg":
            path += "/"
        found = ROUTES.get(path)
        if found is None:
            self.send_error(404)
            return
        kind, body = found
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def git(self, path_info: str, query: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": GIT_ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        if not _:
            head, _, rest = out.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
routes(server.server_address[1])
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
