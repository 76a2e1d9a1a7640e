"""A local stand-in for the Hub endpoints `huggingface_hub` uses to publish and read a dataset repo.

Real `HfApi` and `HfFileSystem` calls go to it over HTTP (nothing of huggingface_hub or x2i is mocked; point
them at `hub.url` with `endpoint=` or HF_ENDPOINT). Writing: create repo, create branch, preupload (every file is
declared "regular", so contents travel inline in the commit and no LFS/Xet storage is needed), validate the card's
YAML, commit (added files, deleted files and folders; each commit moves the branch head). Reading (repo info,
tree listing with pagination, paths-info, resolve with Range and the LFS redirect): tests/fake_hub_read.py. Like
the Hub, the tree reports LFS files (Parquet, tar, images) with their LFS sha256 and other files with their git
blob id. `fail_commit` makes the n-th commit fail (to test resuming); `token`, when set, is the only token the
hub accepts (private repos are then invisible without it); every request is recorded with its Authorization
header. `add_repo` seeds a repo's files directly.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from fake_hub_read import ReadRoutes, error, git_sha1

__all__ = ["FakeHub", "Repo", "git_sha1"]


@dataclass
class Repo:
    private: bool | None
    id: str = ""
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)  # {"branch", "message", "added", "deleted"}
    heads: dict[str, str] = field(default_factory=dict)  # branch -> head commit sha


class FakeHub(ReadRoutes):
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization header)
        self.fail_commit: int | None = None  # 1-based index of the commit to refuse with a 500
        self.token: str | None = None  # when set, the one token accepted
        self.page_size: int | None = None  # tree entries per page (None: the Hub's 1000, 50 with expand)
        self.blobs: dict[str, bytes] = {}  # the LFS "CDN": sha256 -> bytes
        self._commit_calls = 0
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the Hub (every reply has a Content-Length)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _reply(self, method: str, status: int, body, headers: dict[str, str]) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                if not isinstance(body, bytes):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub.lock:
                    hub.requests.append((method, url.path, self.headers.get("Authorization")))
                    status, reply, headers = hub.route(method, url.path, parse_qs(url.query), body, self.headers)
                self._reply(method, status, reply, headers or {})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_HEAD(self) -> None:
                self._handle("HEAD")

            def do_POST(self) -> None:
                self._handle("POST")

        # The Hub, and its LFS "CDN" on another origin (so the client treats the redirect as leaving the Hub).
        self.server, self.cdn_server = (ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2))
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in (self.server, self.cdn_server))
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.server, self.cdn_server)]
        for s in (self.server, self.cdn_server):
            s.daemon_threads = True

    def __enter__(self) -> "FakeHub":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in (self.server, self.cdn_server):
            s.shutdown()
            s.server_close()

    # -- state helpers -----------------------------------------------------------------------------------------
    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]

    def commits(self, repo_id: str) -> list[dict]:
        return self.repos[repo_id].commits

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False) -> Repo:
        """A dataset repo holding `files` (path -> bytes) on main, as if pushed there."""
        with self.lock:
            repo = self.repos[repo_id] = Repo(private=private, id=repo_id)
            repo.branches["main"].update(files or {})
            self._new_head(repo, "main", {"seeded": sorted(files or {})})
        return repo

    def head(self, repo: Repo, branch: str) -> str:
        return repo.heads.get(branch) or hashlib.sha1(f"{repo.id}@{branch}".encode()).hexdigest()

    def _new_head(self, repo: Repo, branch: str, what: object) -> str:
        oid = hashlib.sha1(json.dumps([self.head(repo, branch), what], sort_keys=True).encode()).hexdigest()
        repo.heads[branch] = oid
        return oid

    # -- routing -----------------------------------------------------------------------------------------------
    def _visible(self, repo_id: str, auth: str | None):
        """(the repo, None), or (None, the Hub's error) for a missing repo or one this request may not see."""
        repo = self.repos.get(repo_id)
        authorized = self.token is None or auth == f"Bearer {self.token}"
        if auth and not authorized:
            return None, error(401, None, "Invalid credentials in Authorization header")
        if repo is None or (repo.private and self.token is not None and not auth):
            # the Hub does not tell a private repo from a missing one; anonymous requests get a 401
            return None, error(401 if not auth else 404, "RepoNotFound", "Repository not found")
        return repo, None

    def route(self, method: str, path: str, query: dict, body: bytes, headers=None):
        headers = headers or {}
        auth = headers.get("Authorization")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        not_found = error(404, None, "Sorry, we can't find the page you are looking for.")
        if method == "POST" and parts == ["api", "repos", "create"]:
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                # like the Hub, a conflict still names the repo's url (huggingface_hub reads it)
                return 409, {"error": "You already created this dataset repo",
                             "url": f"{self.url}/datasets/{repo_id}"}, {}
            self.repos[repo_id] = Repo(id=repo_id, private=payload.get("visibility") == "private"
                                       if "visibility" in payload else payload.get("private"))
            return 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}, {}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}, {}
        if method in ("GET", "HEAD") and len(parts) == 2 and parts[0] == "lfs-cdn":
            return self.cdn(parts[1], headers)
        # /datasets/ORG/NAME/resolve/REV/PATH (the REV of a branch never holds a '/': refs/pr/N is not served)
        if method in ("GET", "HEAD") and len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            repo, err = self._visible(f"{parts[1]}/{parts[2]}", auth)
            if err:
                return err
            if parts[4] not in repo.branches:
                return error(404, "RevisionNotFound", f"Invalid rev id: {parts[4]}")
            return self.resolve(method, repo, parts[4], "/".join(parts[5:]), headers)
        if len(parts) < 4 or parts[:2] != ["api", "datasets"]:
            return not_found
        repo_id = f"{parts[2]}/{parts[3]}"
        repo, err = self._visible(repo_id, auth)
        if err:
            return err
        if len(parts) == 4 or (len(parts) == 6 and parts[4] == "revision"):
            branch = parts[5] if len(parts) == 6 else "main"
            if branch not in repo.branches:
                return error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            return self.repo_info(repo_id, repo, branch)
        if len(parts) < 6:
            return not_found
        action, rest = parts[4], parts[5:]
        branch = rest[0]
        if action == "branch" and method == "POST":
            if branch in repo.branches:
                return 409, {"error": "Reference already exists"}, {}
            repo.branches[branch] = dict(repo.branches["main"])
            repo.heads[branch] = self.head(repo, "main")
            return 200, {}, {}
        if branch not in repo.branches:
            return error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        files = repo.branches[branch]
        if action == "tree" and method == "GET":
            return self.tree(repo, branch, "/".join(rest[1:]), query)
        if action == "paths-info" and method == "POST":
            return self.paths_info(repo, branch, parse_qs(body.decode()))
        if action == "preupload" and method == "POST":
            reply = []
            for f in json.loads(body)["files"]:
                item = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                if f["path"] in files:
                    item["oid"] = git_sha1(files[f["path"]])
                reply.append(item)
            return 200, {"files": reply, "commitOid": self.head(repo, branch)}, {}
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
                elif item["key"] == "deletedFile":
                    files.pop(item["value"]["path"], None)
                    deleted.append(item["value"]["path"])
                elif item["key"] == "deletedFolder":
                    folder = item["value"]["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(folder)]:
                        del files[p]
                    deleted.append(item["value"]["path"])
            repo.commits.append({"branch": branch, "message": header["summary"], "added": added, "deleted": deleted})
            oid = self._new_head(repo, branch, repo.commits[-1])
            return 200, {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}, {}
        return not_found
