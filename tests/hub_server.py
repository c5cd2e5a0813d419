"""A small Hugging Face Hub-compatible HTTP server for tests (test infrastructure, not product).

It speaks the subset of the Hub API that szoq and the unmodified `huggingface_hub` client / `hf`
CLI use, with the Hub's status codes and headers: repos (create/delete, public/private),
preupload + NDJSON commit (with `parentCommit` -> 412), tree / paths-info, `resolve` downloads by
branch, tag, full or short sha (`X-Repo-Commit`, `ETag`, Range), refs, tags, branches, pull
requests (`create_pr`), model info, list/search models, `whoami-v2`, `validate-yaml`, and token
auth. State is in memory; commits get real 40-hex shas computed the way git does.

Auth follows the Hub: an unknown token is 401 "Invalid credentials in Authorization header";
a missing or private repo is 401 `RepoNotFound` for anonymous callers and 404 for authenticated
ones; a write without a token is 401, with a read-only token or to a foreign namespace 403
(`read_only_status = 401` answers a read-only token's write with 401, as huggingface.co does).

Test hooks: `served` records every response (method, path, status, bytes of body sent);
`faults` injects a cut-off download, corrupt content, a concurrent commit before the next one, or
a connection that drops after a commit landed (`drop_commit_answer`), a server whose every error
echoes the request's Authorization header (`echo_auth`), and Range answers of unknown length,
`Content-Range: bytes 0-7/*` (`unknown_length`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub calls `oid` / `blobId` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)  # PR number -> head commit


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, headers or {}, extra or {}


class FakeHub:
    """The in-memory state plus the HTTP server. Start with `start()`, stop with `stop()`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.tokens: dict[str, dict] = {}  # token -> {"user", "orgs", "role"}
        self.served: list[dict] = []
        self.faults: dict[str, object] = {}
        self.read_only_status = 403  # what a read-only token's write gets (huggingface.co: 401)
        self.lock = threading.RLock()
        self._clock = 0
        self.httpd: ThreadingHTTPServer | None = None

    # -- setup ---------------------------------------------------------------------------------
    def add_token(self, token: str, user: str, *, orgs: tuple[str, ...] = (), role: str = "write") -> str:
        self.tokens[token] = {"user": user, "orgs": list(orgs), "role": role}
        return token

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    # -- git-like store ------------------------------------------------------------------------
    def _now(self) -> str:
        return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], title: str) -> Commit:
        """Create a commit object (not attached to any ref). The sha is a git-style sha1."""
        self._clock += 1
        tree = "".join(f"{p}\0{git_blob_sha1(d)}\n" for p, d in sorted(files.items()))
        tree_sha = hashlib.sha1(b"tree %d\0" % len(tree) + tree.encode()).hexdigest()
        body = f"tree {tree_sha}\n" + (f"parent {parent}\n" if parent else "") + f"author szoq-test {self._clock} +0000\n\n{title}\n"
        sha = hashlib.sha1(b"commit %d\0" % len(body.encode()) + body.encode()).hexdigest()
        c = Commit(sha, parent, dict(files), title, self._now())
        repo.commits[sha] = c
        return c

    def create_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        repo = Repo(repo_id, private, self._now())
        initial = self.commit(repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit")
        repo.branches["main"] = initial.sha
        self.repos[repo_id] = repo
        return repo

    def resolve(self, repo: Repo, rev: str) -> str:
        """Branch, tag, refs/pr/N, full sha or unique short sha (>= 7 hex) -> commit sha."""
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m and int(m.group(1)) in repo.prs:
            return repo.prs[int(m.group(1))]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            hits = [s for s in repo.commits if s.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # -- auth ----------------------------------------------------------------------------------
    def caller(self, headers) -> dict | None:
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        who = self.tokens.get(token)
        if who is None:
            raise HubError(401, "Invalid credentials in Authorization header", headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        return who

    @staticmethod
    def _owns(who: dict | None, namespace: str) -> bool:
        return who is not None and (namespace == who["user"] or namespace in who["orgs"])

    def visible_repo(self, repo_id: str, who: dict | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._owns(who, repo_id.split("/")[0])):
            # The Hub hides what you cannot see; anonymous callers get 401 instead of 404.
            raise HubError(401 if who is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def check_write(self, namespace: str, who: dict | None) -> None:
        if who is None:
            raise HubError(401, "You must be authenticated to write", headers={"X-Error-Message": "You must be authenticated to write"})
        if self._owns(who, namespace) and who["role"] == "read" and self.read_only_status == 401:
            raise HubError(401, "Invalid credentials in Authorization header", headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        if not self._owns(who, namespace) or who["role"] != "write":
            raise HubError(403, f"You don't have the rights to write to {namespace}")

    # -- views ---------------------------------------------------------------------------------
    def card_data(self, files: dict[str, bytes]) -> dict | None:
        text = files.get("README.md", b"").decode(errors="replace")
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not m:
            return None
        try:
            data = yaml.safe_load(m.group(1))
        except yaml.YAMLError:  # the Hub shows a broken card's metadata as none
            return None
        return data if isinstance(data, dict) else None

    def model_info(self, repo: Repo, sha: str, *, blobs: bool) -> dict:
        commit = repo.commits[sha]
        card = self.card_data(commit.files) or {}
        tags = list(card.get("tags") or [])
        if card.get("library_name"):
            tags.append(card["library_name"])
        if card.get("base_model"):
            tags.append(f"base_model:{card['base_model']}")
        siblings = []
        for path, data in sorted(commit.files.items()):
            s: dict = {"rfilename": path}
            if blobs:
                s.update(size=len(data), blobId=git_blob_sha1(data))
            siblings.append(s)
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": sha, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": tags, "library_name": card.get("library_name"), "cardData": card or None, "siblings": siblings,
        }

    def tree_entry(self, path: str, data: bytes) -> dict:
        return {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self._raw

    def _json_body(self) -> dict:
        raw = self._body()
        return json.loads(raw) if raw else {}

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False, cut: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        if not head:
            if cut:  # a connection that dies half-way through the body
                sent = len(body) // 2
                self.wfile.write(body[:sent])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
            else:
                self.wfile.write(body)
                sent = len(body)
        self.hub.served.append({"method": self.command, "path": urlsplit(self.path).path, "status": status,
                                "range": self.headers.get("Range"), "bytes": sent, "query": urlsplit(self.path).query})

    def _json(self, status: int, data: object, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, exc: HubError) -> None:
        headers = dict(exc.headers)
        if exc.code:
            headers["X-Error-Code"] = exc.code
        headers.setdefault("X-Error-Message", exc.message)
        self._send(exc.status, json.dumps({"error": exc.message, **exc.extra}).encode(), headers, head=self.command == "HEAD")

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        n = int(self.headers.get("Content-Length") or 0)
        self._raw = self.rfile.read(n) if n else b""  # always drain the body: connections are kept alive
        try:
            if self.hub.faults.get("echo_auth") or self.hub.faults.get("echo_token"):  # a broken server that repeats the credentials it was sent
                auth = self.headers.get("Authorization") or "(none)"
                if self.hub.faults.get("echo_token"):  # the bare token, without the word Bearer
                    auth = auth.partition(" ")[2] or auth
                raise HubError(400, f"boom {auth}", headers={"X-Error-Message": f"boom {auth}"})
            with self.hub.lock:
                who = self.hub.caller(self.headers)
            route = self._route(parts)
            if route is None:
                raise HubError(404, f"Cannot {self.command} {url.path}")
            route(parts, query, who)
        except HubError as exc:
            self._error(exc)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    def _route(self, p: list[str]):
        m, n = self.command, len(p)
        if p[:1] != ["api"]:
            if n >= 5 and p[2] == "resolve" and m in ("GET", "HEAD"):
                return self.resolve_file
            return None
        if p[1:] == ["agent-harnesses"]:
            return None  # the client asks once a day; the Hub may answer 404
        if p[1:] == ["whoami-v2"] and m == "GET":
            return self.whoami
        if p[1:] == ["validate-yaml"] and m == "POST":
            return self.validate_yaml
        if p[1:3] == ["repos", "create"] and m == "POST":
            return self.create_repo
        if p[1:3] == ["repos", "delete"] and m == "DELETE":
            return self.delete_repo
        if p[1:] == ["models"] and m == "GET":
            return self.list_models
        if n >= 4 and p[1] == "models":
            op = p[4] if n > 4 else None
            table = {
                (None, "GET"): self.info, ("revision", "GET"): self.info, ("preupload", "POST"): self.preupload,
                ("commit", "POST"): self.commit, ("tree", "GET"): self.tree, ("paths-info", "POST"): self.paths_info,
                ("refs", "GET"): self.refs, ("tag", "POST"): self.create_tag, ("tag", "DELETE"): self.delete_tag,
                ("branch", "POST"): self.create_branch, ("branch", "DELETE"): self.delete_branch,
                ("settings", "PUT"): self.settings,
            }
            return table.get((op, m))
        return None

    # -- account ------------------------------------------------------------------------------
    def whoami(self, p, q, who) -> None:
        if who is None:
            raise HubError(401, "Invalid credentials in Authorization header", headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        self._json(200, {"type": "user", "name": who["user"], "orgs": [{"name": o, "type": "org"} for o in who["orgs"]],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": who["role"]}}})

    def validate_yaml(self, p, q, who) -> None:
        content = self._json_body().get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            data = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as exc:
            raise HubError(400, f"Invalid YAML in README.md: {exc}")
        if m and not isinstance(data, dict):
            raise HubError(400, "Invalid metadata in README.md: not a mapping")
        self._json(200, {"errors": [], "warnings": []})

    # -- repos --------------------------------------------------------------------------------
    def create_repo(self, p, q, who) -> None:
        body = self._json_body()
        if body.get("type", "model") != "model":
            raise HubError(400, "only model repos are supported by this test server")
        namespace = body.get("organization") or (who or {}).get("user")
        with self.hub.lock:
            self.hub.check_write(namespace or "", who)
            repo_id = f"{namespace}/{body['name']}"
            url = f"{self.hub.url}/{repo_id}"
            if repo_id in self.hub.repos:
                # `create_repo(exist_ok=True)` reads the repo url from the 409 body.
                raise HubError(409, "You already created this model repo", extra={"url": url})
            self.hub.create_repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        self._json(200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def delete_repo(self, p, q, who) -> None:
        body = self._json_body()
        namespace = body.get("organization") or (who or {}).get("user") or ""
        repo_id = f"{namespace}/{body.get('name')}"
        with self.hub.lock:
            self.hub.visible_repo(repo_id, who)
            self.hub.check_write(namespace, who)
            del self.hub.repos[repo_id]
        self._json(200, {})

    def settings(self, p, q, who) -> None:
        body = self._json_body()
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            self.hub.check_write(p[2], who)
            if "visibility" in body or "private" in body:
                repo.private = body.get("visibility") == "private" or body.get("private") is True
        self._json(200, {})

    def _repo_rev(self, p: list[str], who, rev_index: int = 5) -> tuple[Repo, str, str]:
        repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
        rev = p[rev_index] if len(p) > rev_index else "main"
        return repo, rev, self.hub.resolve(repo, rev)

    def info(self, p, q, who) -> None:
        with self.hub.lock:
            repo, _, sha = self._repo_rev(p, who)
            data = self.hub.model_info(repo, sha, blobs=bool(q.get("blobs")))
        self._json(200, data)

    def list_models(self, p, q, who) -> None:
        wanted = set(q.get("filter", []))
        author = (q.get("author") or [None])[0]
        search = (q.get("search") or [""])[0].lower()
        limit = int((q.get("limit") or ["1000"])[0])
        out = []
        with self.hub.lock:
            for repo in sorted(self.hub.repos.values(), key=lambda r: r.repo_id):
                if repo.private and not self.hub._owns(who, repo.repo_id.split("/")[0]):
                    continue
                if author and repo.repo_id.split("/")[0] != author:
                    continue
                if search and search not in repo.repo_id.lower():
                    continue
                info = self.hub.model_info(repo, repo.branches["main"], blobs=False)
                if not wanted <= set(info["tags"]):
                    continue
                if not (q.get("cardData") or q.get("full")):
                    info.pop("cardData")
                info.pop("siblings")
                out.append(info)
        self._json(200, out[:limit])

    # -- commits ------------------------------------------------------------------------------
    def preupload(self, p, q, who) -> None:
        body = self._json_body()
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            self.hub.check_write(p[2], who)
            rev = p[5] if len(p) > 5 else "main"
            files = repo.commits[self.hub.resolve(repo, rev)].files if rev in repo.branches or rev in repo.tags else {}
            answer = []
            for f in body.get("files", []):
                old = files.get(f["path"])
                # Small files go as regular git blobs (no LFS/xet service here); the oid of the
                # existing file lets the client skip unchanged ones.
                answer.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                               "oid": git_blob_sha1(old) if old is not None else None})
        self._json(200, {"files": answer, "commitOid": repo.branches.get("main")})

    def commit(self, p, q, who) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            self.hub.check_write(p[2], who)
            rev = p[5] if len(p) > 5 else "main"
            if rev not in repo.branches and not re.fullmatch(r"refs/pr/\d+", rev):
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            racer = self.hub.faults.pop("commit_before_next", None)
            if racer:  # someone else pushes to main between the caller's read and its commit
                head = repo.branches["main"]
                files = dict(repo.commits[head].files, **{"RACE.md": b"concurrent change\n"})
                repo.branches["main"] = self.hub.commit(repo, head, files, "a concurrent commit").sha
            head = self.hub.resolve(repo, rev)
            header = next((x["value"] for x in lines if x["key"] == "header"), {})
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files)
            for item in lines:
                key, val = item["key"], item["value"]
                if key == "file":
                    files[val["path"]] = base64.b64decode(val["content"]) if val.get("encoding") == "base64" else val["content"].encode()
                elif key == "deletedFile":
                    if val["path"] not in files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    files.pop(val["path"])
                elif key == "deletedFolder":
                    files = {k: v for k, v in files.items() if not k.startswith(val["path"].rstrip("/") + "/")}
                elif key == "lfsFile":
                    raise HubError(400, "LFS is not supported by this test server")
            c = self.hub.commit(repo, head, files, header.get("summary") or "update")
            pr_url = None
            if q.get("create_pr"):
                num = max(repo.prs, default=0) + 1
                repo.prs[num] = c.sha
                pr_url = f"{self.hub.url}/{repo.repo_id}/discussions/{num}"
            else:
                repo.branches[rev] = c.sha
        if self.hub.faults.pop("drop_commit_answer", None):  # the commit landed, the answer is lost
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._json(200, {"success": True, "commitOid": c.sha, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{c.sha}",
                         "pullRequestUrl": pr_url})

    # -- files --------------------------------------------------------------------------------
    def tree(self, p, q, who) -> None:
        with self.hub.lock:
            repo, _, sha = self._repo_rev(p, who)
            files = repo.commits[sha].files
        prefix = "/".join(p[6:]).strip("/")
        recursive = (q.get("recursive") or ["false"])[0] in ("1", "true", "True")
        entries, dirs = [], set()
        for path, data in sorted(files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest:
                top = (prefix + "/" if prefix else "") + rest.split("/")[0]
                if top not in dirs:
                    dirs.add(top)
                    entries.append({"type": "directory", "oid": hashlib.sha1(top.encode()).hexdigest(), "size": 0, "path": top})
                if not recursive:
                    continue
            entries.append(self.hub.tree_entry(path, data))
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        self._json(200, entries)

    def paths_info(self, p, q, who) -> None:
        raw = self._body().decode()
        form = parse_qs(raw) if "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or "") else json.loads(raw or "{}")
        paths = form.get("paths", [])
        with self.hub.lock:
            repo, _, sha = self._repo_rev(p, who)
            files = repo.commits[sha].files
        self._json(200, [self.hub.tree_entry(x, files[x]) for x in paths if x in files])

    def resolve_file(self, p, q, who) -> None:
        faults = self.hub.faults
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[0]}/{p[1]}", who)
            sha = self.hub.resolve(repo, p[3])
            path = "/".join(p[4:])
            data = repo.commits[sha].files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"', "Content-Type": "application/octet-stream",
                   "Accept-Ranges": "bytes"}
        status, body = 200, data
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                raise HubError(416, "Requested range not satisfiable")
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{'*' if faults.get('unknown_length') else len(data)}"
        head = self.command == "HEAD"
        if head:
            headers["Content-Length"] = str(len(data))
        if not head and faults.get("corrupt") == path:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        cut = not head and faults.get("cut") == path
        self._send(status, body, headers, head=head, cut=cut)

    # -- refs ---------------------------------------------------------------------------------
    def refs(self, p, q, who) -> None:
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            data = {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in sorted(repo.branches.items())],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in sorted(repo.tags.items())],
                "converts": [],
            }
            if q.get("include_prs"):
                data["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": s} for n, s in sorted(repo.prs.items())]
        self._json(200, data)

    def create_tag(self, p, q, who) -> None:
        body = self._json_body()
        with self.hub.lock:
            repo, _, sha = self._repo_rev(p, who)
            self.hub.check_write(p[2], who)
            tag = body.get("tag", "")
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = sha
        self._json(200, {})

    def delete_tag(self, p, q, who) -> None:
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            self.hub.check_write(p[2], who)
            if repo.tags.pop(p[5], None) is None:
                raise HubError(404, f"Invalid rev id: {p[5]}", "RevisionNotFound")
        self._json(200, {})

    def create_branch(self, p, q, who) -> None:
        body = self._json_body()
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            self.hub.check_write(p[2], who)
            if p[5] in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{p[5]}")
            repo.branches[p[5]] = self.hub.resolve(repo, body.get("startingPoint") or "main")
        self._json(200, {})

    def delete_branch(self, p, q, who) -> None:
        with self.hub.lock:
            repo = self.hub.visible_repo(f"{p[2]}/{p[3]}", who)
            self.hub.check_write(p[2], who)
            if p[5] == "main" or repo.branches.pop(p[5], None) is None:
                raise HubError(400 if p[5] == "main" else 404, f"Cannot delete branch {p[5]}")
        self._json(200, {})

