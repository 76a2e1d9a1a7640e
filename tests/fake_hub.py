"""A local stand-in for the few Hub endpoints `huggingface_hub` uses to publish a dataset.

Real `HfApi` calls go to it over HTTP (nothing of huggingface_hub or x2i is mocked): create repo, create branch,
list the tree, preupload (every file is declared "regular", so contents travel inline in the commit and no
LFS/Xet storage is needed), validate the card's YAML, commit. Like the Hub, the tree reports Parquet files
with their LFS sha256 and other files with their git blob id. `fail_commit` makes the n-th commit fail (to test
resuming); every request is recorded with its Authorization header.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)  # {"branch", "message", "added", "deleted"}


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization header)
        self.fail_commit: int | None = None  # 1-based index of the commit to refuse with a 500
        self._commit_calls = 0
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub.lock:
                    hub.requests.append((method, url.path, self.headers.get("Authorization")))
                    status, reply, headers = hub.route(method, url.path, parse_qs(url.query), body)
                self._reply(status, reply, headers)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- state helpers -----------------------------------------------------------------------------------------
    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]

    def commits(self, repo_id: str) -> list[dict]:
        return self.repos[repo_id].commits

    # -- routing -----------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body: bytes):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        not_found = (404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})
        if method == "POST" and parts == ["api", "repos", "create"]:
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                # like the Hub, a conflict still names the repo's url (huggingface_hub reads it)
                return 409, {"error": "You already created this dataset repo",
                             "url": f"{self.url}/datasets/{repo_id}"}, {}
            self.repos[repo_id] = Repo(private=payload.get("visibility") == "private" if "visibility" in payload
                                       else payload.get("private"))
            return 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}, {}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}, {}
        if len(parts) < 6 or parts[:2] != ["api", "datasets"]:
            return not_found
        repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], parts[5:]
        repo = self.repos.get(repo_id)
        if repo is None:
            return not_found
        branch = rest[0]
        if action == "branch" and method == "POST":
            if branch in repo.branches:
                return 409, {"error": "Reference already exists"}, {}
            repo.branches[branch] = dict(repo.branches["main"])
            return 200, {}, {}
        if branch not in repo.branches:
            return 404, {"error": f"Invalid rev id: {branch}"}, {"X-Error-Code": "RevisionNotFound"}
        files = repo.branches[branch]
        if action == "tree" and method == "GET":
            prefix = "/".join(rest[1:])
            entries = []
            for p, data in sorted(files.items()):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                entry = {"type": "file", "path": p, "size": len(data), "oid": git_sha1(data)}
                if p.endswith(".parquet"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            return 200, entries, {}
        if action == "preupload" and method == "POST":
            reply = []
            for f in json.loads(body)["files"]:
                item = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                if f["path"] in files:
                    item["oid"] = git_sha1(files[f["path"]])
                reply.append(item)
            return 200, {"files": reply, "commitOid": "0" * 40}, {}
        if action == "commit" and method == "POST":
            self._commit_calls += 1
            if self.fail_commit == self._commit_calls:
                return 500, {"error": "simulated failure"}, {}
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            added, deleted = [], []
            for item in lines:
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    added.append(item["value"]["path"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    files.pop(item["value"]["path"], None)
                    deleted.append(item["value"]["path"])
            repo.commits.append({"branch": branch, "message": header["summary"], "added": added, "deleted": deleted})
            oid = hashlib.sha1(json.dumps(repo.commits[-1]).encode()).hexdigest()
            return 200, {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}, {}
        return not_found
