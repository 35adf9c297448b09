"""A loopback stand-in for the few Hugging Face Hub endpoints that huggingface_hub's downloads call,
so tests build a real Hub cache with the real client and no network: the model info at a revision
(`/api/models/{repo}/revision/{rev}`: sha + siblings), the file tree (`/api/models/{repo}/tree/{rev}`),
and HEAD/GET `/{repo}/resolve/{rev}/{file}` with the X-Repo-Commit and ETag headers the client
stores files by. Every request is recorded in `requests` as (method, path)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self):
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch or tag -> commit
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> file -> bytes
        self.requests: list[tuple[str, str]] = []
        self.server: ThreadingHTTPServer | None = None

    def add(self, repo: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> str:
        """A commit of `files` in `repo`, pointed to by `refs`; returns its 40-hex id."""
        h = hashlib.sha1(repo.encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
        self.commits.setdefault(repo, {})[commit] = dict(files)
        for r in refs:
            self.refs.setdefault(repo, {})[r] = commit
        return commit

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def fetched(self) -> set[str]:
        """Names of the files whose bytes were sent (GET of a resolve URL)."""
        return {p.rsplit("/", 1)[-1] for m, p in self.requests if m == "GET" and "/resolve/" in p}

    # ---------------------------------------------------------------------------------------------

    def _commit(self, repo: str, rev: str) -> str | None:
        if rev in self.refs.get(repo, {}):
            return self.refs[repo][rev]
        return rev if rev in self.commits.get(repo, {}) else None

    def answer(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = urlsplit(req.path).path
        self.requests.append((req.command, path))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo, kind, rev = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            return self._api(req, repo, kind, rev, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(req, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
        return self._send(req, 404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

    def _api(self, req, repo: str, kind: str, rev: str, body: bool) -> None:
        if repo not in self.commits:
            return self._send(req, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        commit = self._commit(repo, rev)
        if commit is None:
            return self._send(req, 404, b'{"error": "Invalid rev"}', {"X-Error-Code": "RevisionNotFound"}, body)
        files = self.commits[repo][commit]
        if kind == "revision":
            data = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in sorted(files)]}
        else:
            data = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in sorted(files.items())
            ]
        self._send(req, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, req, repo: str, rev: str, name: str, body: bool) -> None:
        commit = self._commit(repo, rev) if repo in self.commits else None
        data = self.commits[repo][commit].get(name) if commit else None
        if data is None:
            return self._send(req, 404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
        etag = hashlib.sha256(data).hexdigest()
        self._send(req, 200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, body)

    @staticmethod
    def _send(req, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)
