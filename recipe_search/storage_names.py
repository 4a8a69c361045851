"""What a study's storage URL and name may show and be: credentials masked, names that are safe file names."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import RecipeSearchError

_MASK = "***"
# user:password@ up to the last @ before the host (a password may hold @), and password-like query parameters
_USERINFO = re.compile(r"^(?P<scheme>[^:/?#]+://)(?P<user>[^:/?#@]*):(?P<pw>[^/?#]*)@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|pass|secret|token|sslpassword|api_key)=)[^&#]*")


def mask_credentials(url: str) -> str:
    """``url`` (or a message quoting it) with every password hidden: ``user:pw@``, a password holding ``@``,
    ``?password=...``. A regex masks the forms by shape (the password runs to the last ``@`` before the
    host); SQLAlchemy's parser, where it reads the result, checks that no password it would send is left."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{_MASK}@", url)
    shown = _QUERY_SECRET.sub(lambda m: m[1] + _MASK, shown)
    try:
        parsed = make_url(shown)
    except (ArgumentError, ValueError, TypeError):
        return shown
    left = [parsed.password, *(v for k, v in parsed.query.items() if _QUERY_SECRET.match(f"?{k}="))]
    if any(v not in (None, _MASK, (_MASK,), (_MASK, _MASK)) for v in left):  # a form the regex missed
        return f"{parsed.drivername}://{_MASK}"
    return shown


def mask_message(message: str, url: str) -> str:
    """An error message about ``url`` with the URL's password masked, and any piece of it a driver quotes
    (a password holding ``@`` reads to a driver as part of the host)."""
    shown = mask_credentials(message)
    m = _USERINFO.match(url)
    if m and m["pw"]:
        pw = m["pw"]
        tails = [pw.split("@", i)[-1] + "@" for i in range(1, pw.count("@") + 1)]  # what a driver takes for the host
        for piece in sorted({pw, *tails, *(p for p in pw.split("@") if len(p) >= 3)}, key=len, reverse=True):
            shown = shown.replace(piece, _MASK + ("@" if piece.endswith("@") and piece != pw else ""))
    for value in re.findall(r"(?i)[?&](?:password|passwd|pwd|pass|secret|token|sslpassword|api_key)=([^&#]+)", url):
        shown = shown.replace(value, _MASK)
    return shown


def storage_label(url: str) -> str:
    """The storage as a shared recipe records it: credentials masked, a SQLite file by its name only."""
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).name}"
    return mask_credentials(url)


def check_study_name(name: str) -> str:
    """Refuse a study name that is not a plain file name (it names the study's directory under studies/)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 or c == "\x7f" for c in name)):
        raise RecipeSearchError(f"study name {name!r} is not a plain name (no '/', '..' or control characters)")
    return name
