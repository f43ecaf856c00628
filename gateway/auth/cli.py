"""`millrace tokens create|list|revoke` and `millrace audit list|verify`.

Both work on the files beside the store of the config given (`tokens.db`, `audit.db`), so they
can run while the gateway runs: a token created or revoked is in force at the gateway's next
request. Creating and revoking tokens are themselves audited (`cli:<user>`).

Exit codes: 0 success; 1 a failure (`audit verify` found tampering, unknown token id);
2 the configuration is invalid (handled by `gateway.cli.main`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit import AuditLog, audit_path
from gateway.auth.tokens import Role, TokenError, TokenInfo, TokenStore, tokens_path
from gateway.configload import LoadedConfig, load_config

EXIT_OK, EXIT_FAILURES = 0, 1

#: What `millrace demo` keeps its tokens in (inside the demo's data folder).
DEMO_TOKENS = "demo-tokens.json"


def add_parser(sub: Any) -> None:
    tok = sub.add_parser("tokens", help="API tokens: create, list, revoke")
    tsub = tok.add_subparsers(title="tokens commands", metavar="WHAT")
    cr = tsub.add_parser("create", help="create a token (printed once, stored hashed)")
    cr.add_argument("-c", "--config", required=True, help="gateway YAML file")
    cr.add_argument("--role", required=True, choices=[str(r) for r in Role])
    cr.add_argument("--subject", required=True, help="who or what uses it (a person, a scraper)")
    cr.add_argument("--label", default="", help="a note shown by `list`")
    cr.add_argument("--org", help="organisation (default: the gateway's)")
    where = cr.add_mutually_exclusive_group()
    where.add_argument("--site", help="site (default: the gateway's)")
    where.add_argument(
        "--all-sites", action="store_true", help="valid for every site of the organisation"
    )
    cr.set_defaults(func=cmd_tokens_create)
    ls = tsub.add_parser("list", help="tokens with role, org, site, last use, revocation")
    ls.add_argument("-c", "--config", required=True, help="gateway YAML file")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_tokens_list)
    rv = tsub.add_parser("revoke", help="revoke a token by id (takes effect at once)")
    rv.add_argument("-c", "--config", required=True, help="gateway YAML file")
    rv.add_argument("id", help="the token id shown by `create` and `list`")
    rv.set_defaults(func=cmd_tokens_revoke)

    aud = sub.add_parser("audit", help="the tamper-evident audit log: list, verify")
    asub = aud.add_subparsers(title="audit commands", metavar="WHAT")
    al = asub.add_parser("list", help="entries, oldest first")
    al.add_argument("-c", "--config", required=True, help="gateway YAML file")
    al.add_argument("--after", type=int, default=0, help="entries after this seq")
    al.add_argument("--limit", type=int, default=100)
    al.add_argument("--action", help="only this action (device.write, data.export, ...)")
    al.add_argument("--json", action="store_true", help="one JSON object per line")
    al.set_defaults(func=cmd_audit_list)
    av = asub.add_parser("verify", help="check the hash chain; exit 1 naming any bad entry")
    av.add_argument("-c", "--config", required=True, help="gateway YAML file")
    av.set_defaults(func=cmd_audit_verify)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _info_dict(t: TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "role": str(t.role),
        "subject": t.subject,
        "org": t.org,
        "site": t.site,
        "label": t.label,
        "created": t.created,
        "last_used": t.last_used,
        "revoked": t.revoked,
    }


def create_token(
    loaded: LoadedConfig,
    role: Role,
    *,
    subject: str,
    label: str = "",
    org: str | None = None,
    site: str | None = "",
    who: str | None = None,
) -> tuple[str, TokenInfo]:
    """Create a token in the gateway's store (org and site default to the gateway's; `site`
    None: every site) and audit it. Returns the plain token, which is not kept anywhere."""
    ident = loaded.config.gateway
    store = TokenStore(tokens_path(loaded))
    audit = AuditLog(audit_path(loaded))
    try:
        token, info = store.create(
            role,
            subject=subject,
            org=org or ident.org,
            site=ident.site if site == "" else site,
            label=label,
        )
        audit.append_sync("token.create", who or _who(), info.id, _info_dict(info))
    finally:
        store.close()
        audit.close()
    return token, info


def cmd_tokens_create(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    site = None if args.all_sites else (args.site or "")
    try:
        token, info = create_token(
            loaded,
            Role.parse(args.role),
            subject=args.subject,
            label=args.label,
            org=args.org,
            site=site,
        )
    except TokenError as exc:
        print(f"millrace: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    print(token)
    print(
        f"token {info.id}: role {info.role}, org {info.org}, site {info.site or '(all)'} "
        "- shown once, only its hash is stored",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_tokens_list(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    store = TokenStore(tokens_path(loaded))
    try:
        tokens = store.list()
    finally:
        store.close()
    if args.json:
        print(json.dumps([_info_dict(t) for t in tokens], indent=2))
        return EXIT_OK
    print(f"{'id':12}  {'role':10}  {'subject':16}  {'org/site':24}  {'last used':20}  state")
    for t in tokens:
        state = f"revoked {_when(t.revoked)}" if t.revoked else "active"
        where = f"{t.org}/{t.site or '*'}"
        print(
            f"{t.id:12}  {t.role!s:10}  {t.subject[:16]:16}  {where[:24]:24}  "
            f"{_when(t.last_used):20}  {state}{'  ' + t.label if t.label else ''}"
        )
    return EXIT_OK


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    store = TokenStore(tokens_path(loaded))
    audit = AuditLog(audit_path(loaded))
    try:
        info = store.revoke(args.id)
        audit.append_sync("token.revoke", _who(), info.id, {"subject": info.subject})
    except TokenError as exc:
        print(f"millrace: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    finally:
        store.close()
        audit.close()
    print(f"token {info.id} ({info.subject}) revoked")
    return EXIT_OK


def cmd_audit_list(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    audit = AuditLog(audit_path(loaded))
    try:
        entries = audit.entries(after=args.after, limit=args.limit, action=args.action)
    finally:
        audit.close()
    for e in entries:
        if args.json:
            print(json.dumps(e.as_dict(), sort_keys=True))
        else:
            detail = json.dumps(e.detail, sort_keys=True)
            print(f"{e.seq:6}  {_when(e.ts)}  {e.action:16}  {e.target:24}  {e.who}  {detail}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    audit = AuditLog(audit_path(loaded))
    try:
        result = audit.verify()
    finally:
        audit.close()
    for line in result.problems:
        print(f"TAMPERED  {line}")
    verdict = "intact" if result.ok else f"NOT intact ({len(result.problems)} problems)"
    print(
        f"audit log {audit.path}: {result.entries} entries, {verdict}; "
        f"head seq {result.head_seq} hash {result.head_hash}"
    )
    return EXIT_OK if result.ok else EXIT_FAILURES


def demo_tokens(loaded: LoadedConfig, folder: Path) -> dict[str, str]:
    """An admin and a viewer token for `millrace demo`, kept in `folder/demo-tokens.json`
    (mode 0600) and reused while they are still valid, so a restarted demo keeps working
    with the tokens a user already pasted somewhere."""
    path = folder / DEMO_TOKENS
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        kept = {}
    store = TokenStore(tokens_path(loaded))
    try:
        valid = {
            role: tok
            for role, tok in kept.items()
            if isinstance(tok, str) and (p := store.check(tok)) and str(p.role) == role
        }
    finally:
        store.close()
    for role in (Role.ADMIN, Role.VIEWER):
        if str(role) not in valid:
            token, _ = create_token(loaded, role, subject=f"demo-{role}", who="demo")
            valid[str(role)] = token
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(json.dumps(valid, indent=2) + "\n", encoding="utf-8")
    return valid
