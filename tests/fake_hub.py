"""A Hugging Face Hub on localhost (HF_ENDPOINT) for tests: the real huggingface_hub client talks
to it over HTTP, so that missing repositories and revisions, gated models, file sizes and a
download cut halfway go through the client's own code."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    """Serves model (and dataset) repositories: ``add(repo_id, {revision: folder}, gated=..., repo_type=...)``.

    ``on_partial(filename, callback)``: the next GET of that file sends half its bytes, calls
    ``callback()`` (e.g. to kill the downloading process) and closes the connection."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.partial: dict[str, callable] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, revisions: dict[str, Path], gated: bool = False,
            repo_type: str = "model") -> dict[str, str]:
        """Publish folders as revisions of ``repo_id`` (``repo_type`` model or dataset); returns revision -> commit
        hash."""
        commits = {rev: hashlib.sha1(f"{repo_id}@{rev}".encode()).hexdigest() for rev in revisions}
        files = {commits[rev]: {f.relative_to(folder).as_posix(): f.read_bytes()
                                for f in sorted(Path(folder).rglob("*")) if f.is_file()}
                 for rev, folder in revisions.items()}
        self.repos[repo_id] = {"refs": {**commits, **{c: c for c in commits.values()}}, "files": files, "gated": gated,
                               "type": repo_type}
        return commits

    def serve_to(self, monkeypatch, cache: Path) -> None:
        """Point this process's huggingface_hub client (and the child processes it starts) at this hub, with its
        cache in ``cache``, online and without a token."""
        import huggingface_hub.constants as constants

        for name, value in {"HF_ENDPOINT": self.url, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def on_partial(self, filename: str, callback) -> None:
        self.partial[filename] = callback

    # ------------------------------------------------------------------ requests
    def _serve(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append(f"{req.command} {path}" + (f" {req.headers['Range']}" if "Range" in req.headers else ""))
        parts = path.strip("/").split("/")
        repo_type = "dataset" if parts[0] == "datasets" or parts[:2] == ["api", "datasets"] else "model"
        if repo_type == "dataset" and parts[0] == "datasets":
            parts = parts[1:]  # /datasets/<repo_id>/resolve/...: as a model's file URL from here
        if parts[:2] in (["api", "models"], ["api", "datasets"]):
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            kind, revision, file = rest[0], rest[1] if len(rest) > 1 else "main", None
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, kind, revision, file = "/".join(parts[:2]), "resolve", parts[3], "/".join(parts[4:])
        else:
            return self._error(req, 404, "EntryNotFound")
        repo = self.repos.get(repo_id)
        if repo is None or repo["type"] != repo_type:
            return self._error(req, 401, "RepoNotFound")  # the hub answers so for private repositories too
        if repo["gated"] and "authorization" not in {k.lower() for k in req.headers}:
            return self._error(req, 401, "GatedRepo")
        commit = repo["refs"].get(revision)
        if commit is None:
            return self._error(req, 404, "RevisionNotFound")
        files = repo["files"][commit]
        if kind == "revision":
            return self._json(req, {"id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in files]})
        if kind == "tree":
            return self._json(req, [{"type": "file", "path": f, "size": len(data),
                                     "oid": hashlib.sha1(data).hexdigest()} for f, data in files.items()])
        if file not in files:
            return self._error(req, 404, "EntryNotFound")
        self._file(req, commit, file, files[file], body)

    def _file(self, req, commit: str, name: str, data: bytes, body: bool) -> None:
        start = 0
        if req.headers.get("Range", "").startswith("bytes="):
            start = int(req.headers["Range"][6:].split("-")[0])
        req.send_response(206 if start else 200)
        req.send_header("X-Repo-Commit", commit)
        req.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        req.send_header("Content-Length", str(len(data) - start))
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        if not body:
            return
        callback = self.partial.pop(name, None) if req.command == "GET" else None
        if callback is None:
            req.wfile.write(data[start:])
            return
        req.wfile.write(data[start:start + (len(data) - start) // 2])
        req.wfile.flush()
        callback()
        req.close_connection = True

    def _json(self, req, value) -> None:
        payload = json.dumps(value).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        if req.command == "GET":
            req.wfile.write(payload)

    def _error(self, req, status: int, code: str) -> None:
        payload = json.dumps({"error": code}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        if req.command == "GET":
            req.wfile.write(payload)
