"""A small Hub-compatible HTTP server for tests: enough of the Hub API for ``huggingface_hub`` and
``from_pretrained`` to publish and load model repos, with fault injection.

Threaded stdlib ``http.server`` on 127.0.0.1 (a free port), repos in memory. Implemented routes (model
repos only), as ``huggingface_hub`` 2.4 calls them:

- ``GET  /api/whoami-v2``
- ``POST /api/repos/create`` (409 with ``{"url": ...}`` when the repo exists)
- ``GET  /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (repo info)
- ``GET  /api/models/{repo}/refs``; ``POST``/``DELETE /api/models/{repo}/branch/{branch}``
- ``POST /api/models/{repo}/preupload/{rev}`` (every file ``regular``, with the remote ``oid``)
- ``POST /api/models/{repo}/commit/{rev}`` (ndjson: header / file / deletedFile / deletedFolder;
  ``parentCommit`` is checked: 412 when the branch moved)
- ``POST /api/validate-yaml``
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``, ``POST /api/models/{repo}/paths-info/{rev}``
- ``GET  /api/models/{repo}/commits/{rev}`` (newest first, no pagination)
- ``GET``/``HEAD /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, quoted ``ETag``, ``Content-Length``

Every repo starts like a Hub repo: an initial commit on ``main`` holding ``.gitattributes``. Oids are
git blob sha1s; commit ids are 40-hex strings. Commits always create a new commit, even when nothing
changes (as git allows), so a client that re-sends a commit shows up as a duplicate in
:meth:`LocalHub.commit_count`.

Fault injection (thread-safe): :meth:`LocalHub.fail_commits` (the next N commits answer an error
without being applied), :meth:`LocalHub.lose_commit_responses` (the next N commits are applied, then
answered 500), :attr:`LocalHub.down` (every request answered 503), :attr:`LocalHub.commit_delay`
(every commit takes that long), :attr:`LocalHub.forbidden_namespaces` (writes to repos of those users or
organizations answer 403, as the Hub does for someone else's namespace).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
MAX_BODY_BYTES = 256 * 1024 * 1024  # keep the server bounded: tests upload tiny models


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of ``content`` (the oid the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str]  # path -> blob oid


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid


class HubError(Exception):
    """An error answer: status, message and optional Hub error code (``X-Error-Code``)."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class LocalHub:
    """In-memory Hub state plus the HTTP server serving it. Use as a context manager or start()/stop()."""

    def __init__(self, user: str = "tester", token: str | None = None):
        self.user = user
        self.token = token  # when set, write requests must carry it and reads of private repos too
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.down = False
        self.commit_delay = 0.0  # seconds each commit request takes (a slow Hub)
        self.forbidden_namespaces: set[str] = set()  # writes there answer 403 (someone else's user or org)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.authorized_requests = 0
        self._commit_failures: list[int] = []  # statuses of the next commits to fail
        self._lost_responses = 0
        self._commit_counts: dict[tuple[str, str], int] = {}
        self._counter = itertools.count()
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "LocalHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------------------------ faults
    def fail_commits(self, count: int, status: int = 500) -> None:
        """The next ``count`` commit requests answer ``status`` and change nothing."""
        with self._lock:
            self._commit_failures.extend([status] * count)

    def lose_commit_responses(self, count: int = 1) -> None:
        """The next ``count`` commits are applied, then answered 500 (the client never learns they worked)."""
        with self._lock:
            self._lost_responses += count

    def commit_count(self, repo_id: str, branch: str) -> int:
        """Commits created on ``branch`` through the commit endpoint (the initial commit excluded)."""
        with self._lock:
            return self._commit_counts.get((repo_id, branch), 0)

    # ------------------------------------------------------------------------------------ inspection
    def branch_files(self, repo_id: str, branch: str) -> dict[str, bytes]:
        with self._lock:
            repo = self.repos[repo_id]
            commit = repo.commits[repo.branches[branch]]
            return {path: self.blobs[oid] for path, oid in commit.files.items()}

    def head(self, repo_id: str, branch: str) -> str:
        with self._lock:
            return self.repos[repo_id].branches[branch]

    # ------------------------------------------------------------------------------------ internals
    def _now(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _new_commit(self, repo: Repo, parent: str | None, title: str, message: str, files: dict[str, str]) -> Commit:
        seed = json.dumps([repo.repo_id, parent, title, sorted(files.items()), next(self._counter)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, self._now(), files)
        repo.commits[commit.oid] = commit
        return commit

    def _store_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        self.blobs[oid] = content
        return oid

    def create_repo(self, repo_id: str, private: bool = False) -> tuple[Repo, bool]:
        with self._lock:
            if repo_id in self.repos:
                return self.repos[repo_id], False
            repo = Repo(repo_id, private)
            files = {".gitattributes": self._store_blob(GITATTRIBUTES)}
            initial = self._new_commit(repo, None, "initial commit", "", files)
            repo.branches["main"] = initial.oid
            self.repos[repo_id] = repo
            return repo, True

    def _repo(self, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for oid, c in repo.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

    def log_message(self, format, *args):  # silence the default stderr access log
        pass

    # ------------------------------------------------------------------------------------ plumbing
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send_json(413, {"error": "payload too large"})
            return
        self.body = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization", "")
        presented = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with hub._lock:
            hub.requests.append((method, url.path))
            if presented is not None:
                hub.authorized_requests += 1
            down = hub.down
        if down:
            self._send_json(503, {"error": "Service Unavailable"})
            return
        if hub.token is not None and presented is not None and presented != hub.token:
            self._send_json(401, {"error": "Invalid credentials in Authorization header"})
            return
        self.authorized = presented is not None
        path = unquote(url.path)
        try:
            for route_method, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                head_of_get = route_method == "GET" and method == "HEAD" and handler is _Handler.resolve
                if route_method == method or head_of_get:
                    if match:
                        handler(self, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
                        return
            raise HubError(404, f"no route for {method} {path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            headers.update(error.extra.pop("_headers", {}))
            self._send_json(error.status, {"error": error.message, **error.extra}, headers)
        except Exception as error:  # a bug in this server: answer 500 instead of dropping the connection
            self._send_json(500, {"error": f"local hub error: {error!r}"})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"invalid JSON body: {error}")

    def _require_write(self, repo_id: str | None = None) -> None:
        if self.hub.token is not None and not self.authorized:
            raise HubError(401, "You must be authenticated to write")
        if repo_id is not None and repo_id.split("/")[0] in self.hub.forbidden_namespaces:
            raise HubError(403, f"You don't have the rights to create a model under the namespace "
                                f"\"{repo_id.split('/')[0]}\"", "Forbidden")

    def _repo_url(self, repo_id: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{repo_id}"

    # ------------------------------------------------------------------------------------ routes
    def whoami(self):
        if not self.authorized:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._send_json(200, {
            "type": "user", "name": self.hub.user, "fullname": self.hub.user, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        })

    def create_repo(self):
        self._require_write()
        body = self._json_body()
        if body.get("type", "model") not in (None, "model"):
            raise HubError(400, "the local hub serves model repos only")
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        self._require_write(repo_id)
        private = body.get("private", body.get("visibility") == "private") or False
        _, created = self.hub.create_repo(repo_id, private=bool(private))
        url = self._repo_url(repo_id)
        if not created:
            raise HubError(409, "You already created this model repo", extra={"url": url})
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, repo, rev="main"):
        with self.hub._lock:
            repository = self.hub._repo(repo, self.authorized)
            commit = self.hub._resolve(repository, rev)
            siblings = [{"rfilename": path} for path in sorted(commit.files)]
        self._send_json(200, {
            "id": repo, "_id": hashlib.md5(repo.encode()).hexdigest()[:24], "modelId": repo,
            "author": repo.split("/")[0], "sha": commit.oid, "private": repository.private, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "lastModified": commit.date, "createdAt": repository.commits[next(iter(repository.commits))].date,
        })

    def refs(self, repo):
        with self.hub._lock:
            repository = self.hub._repo(repo, self.authorized)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in sorted(repository.branches.items())
            ]
        self._send_json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def create_branch(self, repo, branch):
        self._require_write(repo)
        body = self._json_body()
        with self.hub._lock:
            repository = self.hub._repo(repo, self.authorized)
            if branch in repository.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self.hub._resolve(repository, body.get("startingPoint") or "main")
            repository.branches[branch] = start.oid
        self._send_json(200, {})

    def delete_branch(self, repo, branch):
        self._require_write()
        with self.hub._lock:
            repository = self.hub._repo(repo, self.authorized)
            if branch not in repository.branches or branch == "main":
                raise HubError(404 if branch != "main" else 403, f"cannot delete branch {branch}")
            del repository.branches[branch]
        self._send_json(200, {})

    def preupload(self, repo, rev):
        self._require_write()
        body = self._json_body()
        with self.hub._lock:
            repository = self.hub._repo(repo, self.authorized)
            commit = self.hub._resolve(repository, rev)
            files = [
                {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": commit.files.get(item["path"])}
                for item in body.get("files", [])
            ]
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def commit(self, repo, rev):
        self._require_write(repo)
        hub = self.hub
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise HubError(400, f"invalid ndjson: {error}")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first ndjson line must be the commit header")
        header = lines[0]["value"]
        if hub.commit_delay:
            time.sleep(hub.commit_delay)
        with hub._lock:
            if hub._commit_failures:
                status = hub._commit_failures.pop(0)
                raise HubError(status, "injected commit failure")
            repository = hub._repo(repo, self.authorized)
            branch = unquote(rev)
            if branch not in repository.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repository.commits[repository.branches[branch]]
            parent = header.get("parentCommit")
            if parent is not None and not head.oid.startswith(parent):
                raise HubError(412, f"A commit has happened since. Please refresh and try again (head {head.oid}).")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, "only base64 file content is supported")
                    files[value["path"]] = hub._store_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: o for p, o in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"unsupported commit operation {key!r} (the local hub has no LFS storage)")
            new = hub._new_commit(repository, head.oid, header.get("summary", ""), header.get("description", ""), files)
            repository.branches[branch] = new.oid
            hub._commit_counts[(repo, branch)] = hub._commit_counts.get((repo, branch), 0) + 1
            lost = hub._lost_responses > 0
            if lost:
                hub._lost_responses -= 1
        if lost:
            raise HubError(500, "injected lost response (the commit was applied)")
        self._send_json(200, {
            "success": True, "commitOid": new.oid, "commitUrl": f"{self._repo_url(repo)}/commit/{new.oid}",
            "commitMessage": new.title, "pullRequestUrl": None,
        })

    def validate_yaml(self):
        import yaml

        content = self._json_body().get("content", "")
        match = re.match(r"^---\n(.*?)\n---", content, re.DOTALL)
        errors = []
        if match:
            try:
                metadata = yaml.safe_load(match.group(1))
                if metadata is not None and not isinstance(metadata, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as error:
                errors.append({"message": f"invalid YAML: {error}"})
        self._send_json(400 if errors else 200, {"errors": errors, "warnings": []})

    def _entries(self, commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for path, oid in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest and not recursive:
                folders.add(f"{prefix}/{rest.split('/')[0]}" if prefix else rest.split("/")[0])
                continue
            entries.append({"type": "file", "path": path, "size": len(self.hub.blobs[oid]), "oid": oid})
        return [{"type": "directory", "path": f, "size": 0, "oid": hashlib.sha1(f.encode()).hexdigest()}
                for f in sorted(folders)] + entries

    def tree(self, repo, rev, path=""):
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            commit = self.hub._resolve(self.hub._repo(repo, self.authorized), rev)
            entries = self._entries(commit, path or "", recursive)
        self._send_json(200, entries)

    def paths_info(self, repo, rev):
        form = parse_qs(self.body.decode())
        paths = form.get("paths", [])
        with self.hub._lock:
            commit = self.hub._resolve(self.hub._repo(repo, self.authorized), rev)
            entries = [
                {"type": "file", "path": p, "size": len(self.hub.blobs[commit.files[p]]), "oid": commit.files[p]}
                for p in paths if p in commit.files
            ]
        self._send_json(200, entries)

    def commits(self, repo, rev):
        with self.hub._lock:
            repository = self.hub._repo(repo, self.authorized)
            commit, history = self.hub._resolve(repository, rev), []
            while commit is not None:
                history.append({
                    "id": commit.oid, "title": commit.title, "message": commit.message, "date": commit.date,
                    "authors": [{"user": self.hub.user}],
                })
                commit = repository.commits.get(commit.parent) if commit.parent else None
        self._send_json(200, history)

    def resolve(self, repo, rev, path):
        with self.hub._lock:
            commit = self.hub._resolve(self.hub._repo(repo, self.authorized), rev)
            oid = commit.files.get(path)
            if oid is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound",
                               extra={"_headers": {"X-Repo-Commit": commit.oid}})
            content = self.hub.blobs[oid]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        status, body = 200, content
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and int(match.group(1)) < len(content):
            start = int(match.group(1))
            status, body = 206, content[start:]
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self._send(status, body, "application/octet-stream", headers)


_ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"/api/models/{_REPO}/refs", _Handler.refs),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", _Handler.create_branch),
    ("DELETE", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", _Handler.delete_branch),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", _Handler.commit),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", _Handler.tree),
    ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", _Handler.paths_info),
    ("GET", rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", _Handler.commits),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", _Handler.repo_info),
    ("GET", rf"/api/models/{_REPO}", _Handler.repo_info),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
]
