"""The read side of tests/fake_hub.py: the Hub endpoints `huggingface_hub.HfFileSystem` (and `hf_hub_download`)
read a dataset repo through, answered the way the real Hub answers them (as huggingface_hub 2.x parses them):

- GET  /api/datasets/ORG/NAME[/revision/REV]      repo info: id, sha (the branch head), private, siblings
- GET  /api/datasets/ORG/NAME/tree/REV[/PATH]     listing: direct children, or with ?recursive=true every file and
                                                  folder below; ?expand=true adds lastCommit; cursor pagination
                                                  through a `Link: <...>; rel="next"` header (1000 entries a
                                                  page, 50 with expand, like the Hub; `page_size` overrides)
- POST /api/datasets/ORG/NAME/paths-info/REV      form data paths=...&expand=...: the entries that exist
- GET/HEAD /datasets/ORG/NAME/resolve/REV/PATH    the file: X-Repo-Commit, ETag (git blob id), Accept-Ranges,
                                                  Range -> 206 + Content-Range (416 past the end). An LFS file
                                                  (Parquet, tar, images) answers 302 to the fake's LFS "CDN" (on
                                                  another origin, /lfs-cdn/SHA256) with X-Linked-Size and
                                                  X-Linked-Etag, as the Hub redirects LFS downloads.

Errors carry the Hub's X-Error-Code / X-Error-Message headers, which huggingface_hub maps to its exceptions:
a missing repo is 401 RepoNotFound without a token and 404 with one, a wrong token 401 "Invalid credentials in
Authorization header", a missing revision 404 RevisionNotFound, a missing path 404 EntryNotFound.
"""
from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

LFS_SUFFIXES = (".parquet", ".arrow", ".tar", ".jpg", ".jpeg", ".png", ".webp", ".gz", ".zip")
DATE = "2026-01-01T00:00:00.000Z"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.lower().endswith(LFS_SUFFIXES)


def error(status: int, code: str | None, message: str) -> tuple[int, dict, dict]:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return status, {"error": message}, headers


def _folders(files: dict[str, bytes]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}


class ReadRoutes:
    """Mixed into FakeHub: needs self.url, self.cdn_url, self.blobs, self.page_size, self.head(repo, branch)."""

    def file_entry(self, path: str, data: bytes, expand: bool, commit: dict) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        if is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        if expand:
            entry["lastCommit"] = commit
            entry["securityFileStatus"] = {"status": "safe", "avScan": {"status": "safe"},
                                           "pickleImportScan": {"status": "unscanned", "pickleImports": []}}
        return entry

    def folder_entry(self, path: str, files: dict[str, bytes], expand: bool, commit: dict) -> dict:
        below = sorted((p, git_sha1(d)) for p, d in files.items() if p.startswith(path + "/"))
        entry = {"type": "directory", "path": path, "oid": hashlib.sha1(repr(below).encode()).hexdigest()}
        if expand:
            entry["lastCommit"] = commit
        return entry

    def _last_commit(self, repo, branch: str) -> dict:
        return {"id": self.head(repo, branch), "title": "last commit", "date": DATE}

    def repo_info(self, repo_id: str, repo, branch: str) -> tuple[int, dict, dict]:
        files = repo.branches[branch]
        return 200, {"id": repo_id, "_id": repo_id, "author": repo_id.split("/")[0], "sha": self.head(repo, branch),
                     "private": bool(repo.private), "gated": False, "disabled": False, "lastModified": DATE,
                     "createdAt": DATE, "tags": [], "downloads": 0, "likes": 0,
                     "siblings": [{"rfilename": p} for p in sorted(files)]}, {}

    def tree(self, repo, branch: str, path: str, query: dict) -> tuple[int, object, dict]:
        files = repo.branches[branch]
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        expand = query.get("expand", ["false"])[0].lower() == "true"
        folders = _folders(files)
        if path and path not in folders:
            # a missing path, or a file: the Hub lists folders only (HfFileSystem then lists the parent)
            return error(404, "EntryNotFound", f"{path} does not exist on {branch}")
        prefix = path + "/" if path else ""
        commit = self._last_commit(repo, branch)

        def below(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

        # "tree first": folders, then files, each in path order
        entries = [self.folder_entry(f, files, expand, commit) for f in sorted(folders) if below(f)]
        entries += [self.file_entry(p, files[p], expand, commit) for p in sorted(files) if below(p)]
        size = self.page_size or (50 if expand else 1000)
        start = int(base64.urlsafe_b64decode(query["cursor"][0]).decode()) if "cursor" in query else 0
        headers = {}
        if start + size < len(entries):
            cursor = base64.urlsafe_b64encode(str(start + size).encode()).decode()
            args = f"recursive={str(recursive).lower()}&expand={str(expand).lower()}&cursor={cursor}"
            url = f"{self.url}/api/datasets/{repo.id}/tree/{quote(branch, safe='')}" + \
                  (f"/{quote(path, safe='')}" if path else "")
            headers["Link"] = f'<{url}?{args}>; rel="next"'
        return 200, entries[start:start + size], headers

    def paths_info(self, repo, branch: str, form: dict) -> tuple[int, list, dict]:
        files = repo.branches[branch]
        expand = form.get("expand", ["False"])[0].lower() == "true"
        commit, folders, out = self._last_commit(repo, branch), _folders(files), []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in files:
                out.append(self.file_entry(p, files[p], expand, commit))
            elif p in folders:
                out.append(self.folder_entry(p, files, expand, commit))
        return 200, out, {}

    def resolve(self, method: str, repo, branch: str, path: str, headers: dict) -> tuple[int, object, dict]:
        files = repo.branches[branch]
        if path not in files:
            return error(404, "EntryNotFound", f"Entry not found: {path}")
        data = files[path]
        head = {"X-Repo-Commit": self.head(repo, branch), "ETag": f'"{git_sha1(data)}"'}
        if is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            self.blobs[sha] = data
            return 302, b"", {**head, "Location": f"{self.cdn_url}/lfs-cdn/{sha}", "X-Linked-Size": str(len(data)),
                              "X-Linked-Etag": f'"{sha}"'}
        return serve_bytes(data, headers, head)

    def cdn(self, sha: str, headers: dict) -> tuple[int, object, dict]:
        if sha not in self.blobs:
            return 404, b"", {}
        return serve_bytes(self.blobs[sha], headers, {"ETag": f'"{sha}"'})


def serve_bytes(data: bytes, request_headers: dict, headers: dict) -> tuple[int, bytes, dict]:
    """The bytes, or the byte range a `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` header asks for."""
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    spec = request_headers.get("Range") or request_headers.get("range")
    if not spec:
        return 200, data, headers
    first, _, last = spec.removeprefix("bytes=").partition("-")
    if first == "":
        start, end = max(0, len(data) - int(last)), len(data) - 1
    else:
        start, end = int(first), min(int(last), len(data) - 1) if last else len(data) - 1
    if start >= len(data) or start > end:
        return 416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"}
    return 206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
