"""Hub refusals as one-line `HubError`s that say why, with any token the server echoed removed.

Split from `transport.py` (moving bytes): this is the one mapping of huggingface_hub and HTTP
exceptions to szoq's error family. Server text is outside text: it goes through
`core.scrub.scrub` before it is put in a message, because a Hub (or a proxy) may echo the
request's Authorization header. A refused push asks the Hub who the token is, so that a valid
read-only token is told apart from a missing or invalid one (the Hub answers 401 for both).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..core.errors import HubError, SzoqError
from .scrub import scrub
from .client import api, endpoint

LOGIN_HINT = "pass --token, set HF_TOKEN, or run: hf auth login"


def as_szoq_error(exc: BaseException, *, repo_id: str | None = None, revision: str | None = None, action: str = "access",
                  art=None, token: str | None = None) -> SzoqError | None:
    """Map a huggingface_hub / HTTP exception to a one-line `HubError` with a hint.

    Args:
        exc: The exception.
        repo_id: The repo concerned, for the message.
        revision: The revision concerned, for the message.
        action: What was being done ("push to", "read", "search", ...), for the message and hint.
        art: The artifact concerned (`transport.Artifact`), for "not a szoq ... repo" messages.
        token: The token the request used (None: HF_TOKEN or the login), to tell a read-only
            token from an invalid one when a push is refused.

    Returns:
        The mapped error, or None when `exc` is not a Hub error.
    """
    import httpx2
    from huggingface_hub import errors as hf

    repo = repo_id or "the repo"
    at = f"{repo}@{revision}" if revision else repo
    kind = art.kind if art else "artifact"
    if isinstance(exc, SzoqError):
        return exc
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubError(f"revision {revision!r} not found in {repo}", hint=f"use an existing tag, branch (e.g. main) or commit sha of {repo}")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubError(f"Hub repo {repo} not found (or it is private and this token cannot see it)", hint=f"check the name; for a private repo {LOGIN_HINT}")
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        main = art.main_file if art else "the expected file"
        return HubError(f"{at} has no {main}: it is not a szoq {kind} repo", hint=art.search_hint if art else "check the repo id")
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        return HubError(f"{at} is not in the local Hugging Face cache and szoq is offline",
                        hint=f"run once while online: szoq {kind if art else 'mask'} pull {at}")
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403) and action.startswith("push") and _token_role(token) == "read":
            return HubError(f"this is a read-only token: it cannot {action} {repo}", hint=f"use a token with write access: {LOGIN_HINT}")
        if status == 401:
            return HubError(f"the Hub refused the request to {repo}: no token or an invalid token", hint=LOGIN_HINT)
        if status == 403:
            org = repo.split("/")[0]
            return HubError(f"this token may not {action} {repo} (read-only token, or not a member of {org})", hint=f"use a token with write access to {org}: {LOGIN_HINT}")
        if status == 412:
            return HubError(f"{repo} changed while pushing (another commit landed on main first); nothing was pushed",
                            hint="look at the repo's new state, then run the same push again")
        return HubError(f"the Hub answered {status} for {at}: {_server_message(exc)}", hint="retry; rerun with --debug for details if it persists")
    if isinstance(exc, hf.HFValidationError):
        return HubError(f"invalid Hub repo id or revision ({scrub(str(exc).splitlines()[0])[:200]})", hint="use ORG/NAME[@REV], e.g. my-team/smollm2-mask@v1")
    if isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError)):
        if action.startswith("push"):
            # A commit is atomic on the Hub: it landed whole or not at all, and a repeated push
            # of the same bytes is recognised and makes no second commit.
            return HubError(f"the connection to the Hub broke while pushing to {repo}; the commit may or may not have landed",
                            hint="run the same push again: if it landed, szoq sees that and pushes nothing twice")
        return HubError(f"the connection to the Hub broke while reading {at}; nothing was registered",
                        hint="run the same command again (the download resumes)")
    if isinstance(exc, httpx2.TransportError):
        return HubError(f"cannot reach the Hub at {endpoint()} ({type(exc).__name__})", hint="check the network or HF_ENDPOINT; use --offline to read a cached copy")
    return None


def _server_message(exc) -> str:
    """What the server said, scrubbed of tokens and cut to one short line (it is outside text)."""
    try:
        text = str(exc.response.json().get("error", "")) or exc.response.reason_phrase
    except Exception:  # any body: the reason phrase is the fallback
        text = exc.response.reason_phrase
    return scrub(" ".join(str(text).split()))[:300]


def _token_role(token: str | None) -> str | None:
    """The role ("read", "write", "fineGrained") of a token as the Hub reports it, else None."""
    try:
        info = api().whoami(token=token)
        role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    except Exception:  # no token, an invalid one, or no answer: the caller's message stands
        return None
    return role if isinstance(role, str) else None


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None, action: str = "access", art=None, token: str | None = None) -> Iterator[None]:
    """Turn Hub exceptions inside the block into HubError naming the repo and revision (see `as_szoq_error`)."""
    try:
        yield
    except SzoqError:
        raise
    except Exception as exc:
        mapped = as_szoq_error(exc, repo_id=repo_id, revision=revision, action=action, art=art, token=token)
        if mapped is None:
            raise
        raise mapped from None


