"""``crmsync doctor``: turn what the probes found into OK / WARN / FAIL, each failure with its fix.

Why a service: the judgement (what is wrong, how bad, what to do about it) is the part worth
testing and keeping in one place; the probes that look at databases, Redis, Exchange and the
Celery workers are adapters, wired in crmsync.bootstrap, and report plain facts (dicts) so that
this module needs no driver. A probe that raises is reported as a FAIL of its check, never as a
crash of the doctor.

Severity: FAIL is "crmsync cannot work correctly like this" (exit non-zero); WARN is "it works,
but an outage or a restart will cost you" (persistence off, TLS not verified, plain HTTP).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


class DoctorProbes(Protocol):
    """What the doctor asks of the deployment (implemented in crmsync.bootstrap)."""

    def crm(self) -> dict[str, Any]: ...            # error | schema_error | missing_triggers
    def state(self) -> dict[str, Any]: ...          # error | revision, head, known, held_deletes
    def redis(self) -> dict[str, Any]: ...          # error | not_redis | maxmemory_policy, aof, rdb;
    #     sentinels (sentinel:// only): answering, silent ["host:port"], master "host:port" | None, name
    def exchange_endpoint(self) -> dict[str, Any]: ...  # kind, detail, scheme, verify_tls
    def mailbox(self, address: str, folder: str) -> dict[str, Any]: ...  # kind, detail; username_key,
    #     password_env_key, own_credentials: the config keys it signs in with (default [exchange]'s);
    #     access: "impersonation" | "delegate", username: the account that signs in
    def graph_mailbox(self, address: str, folder: str) -> dict[str, Any]: ...  # kind, detail; client_id
    def workers(self) -> dict[str, Any]: ...        # error | workers: {hostname: [queues]}


def _safely(name: str, probe: Callable[[], dict[str, Any]]) -> dict[str, Any] | Check:
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - a probe's own failure is a FAIL, not a crash
        return Check(name, "FAIL", f"the check itself failed: {type(exc).__name__}: {exc}",
                     "see the error; run with --config pointing at the right file")


def check_crm(probes: DoctorProbes, where: str) -> list[Check]:
    facts = _safely("crm.database", probes.crm)
    if isinstance(facts, Check):
        return [facts]
    if facts.get("error"):
        return [Check("crm.database", "FAIL", f"{where}: cannot connect: {facts['error']}",
                      "check [crm] url (and crm.password_env) and that the database server is up")]
    checks = [Check("crm.database", "OK", f"{where}: reachable")]
    if facts.get("schema_error"):
        checks.append(Check("crm.schema", "FAIL", facts["schema_error"],
                            "run `crmsync init` (creates missing tables; never alters existing ones), "
                            "or add the missing columns"))
        return checks
    checks.append(Check("crm.schema", "OK", "accounts, contacts and crm_changelog present"))
    missing = list(facts.get("missing_triggers") or ())
    if missing:
        checks.append(Check("crm.triggers", "FAIL",
                            f"change-capture trigger(s) missing: {', '.join(missing)}; CRM edits are not seen",
                            "run `crmsync init` to install the triggers"))
    else:
        checks.append(Check("crm.triggers", "OK", "change-capture triggers installed"))
    return checks


def check_state(probes: DoctorProbes, where: str) -> list[Check]:
    facts = _safely("state.database", probes.state)
    if isinstance(facts, Check):
        return [facts]
    if facts.get("error"):
        return [Check("state.database", "FAIL", f"{where}: cannot connect: {facts['error']}",
                      "check [state] url (and state.password_env) and that the database server is up")]
    checks = [Check("state.database", "OK", f"{where}: reachable")]
    revision, head = facts.get("revision"), facts.get("head")
    if revision is None:
        checks.append(Check("state.migrations", "FAIL", "no crmsync tables (not migrated)",
                            "run `crmsync init` to create the state tables"))
    elif revision == head:
        checks.append(Check("state.migrations", "OK", f"at the latest migration ({head})"))
        checks += _held_deletes(facts.get("held_deletes") or ())
    elif facts.get("known", True):
        checks.append(Check("state.migrations", "FAIL", f"at migration {revision}, this crmsync needs {head}",
                            "stop the producer and workers, run `crmsync init` (it upgrades), start them again"))
    else:
        checks.append(Check("state.migrations", "FAIL",
                            f"at migration {revision}, unknown to this crmsync (latest known: {head})",
                            "this crmsync is older than the database: install the crmsync version that migrated it"))
    return checks


def _held_deletes(held: Sequence[tuple[str, str, int]]) -> list[Check]:
    """A WARN per mailbox and reason with deletes waiting for a person: the delete brake's, and
    the empty-folder guard's (the sync folder read empty or disappeared: always held)."""
    checks = []
    for mailbox, why, count in held:
        if why in ("folder-empty", "folder-missing"):
            what = "reads empty" if why == "folder-empty" else "has disappeared"
            checks.append(Check(f"deletes {mailbox}", "WARN",
                                f"{count} delete(s) held: the sync folder {what} (the empty-folder guard)",
                                "check the folder in Outlook (restore it, or its contacts, from Deleted Items); "
                                "then `crmsync deletes list` and approve or discard"))
        else:
            checks.append(Check(f"deletes {mailbox}", "WARN", f"{count} delete(s) held by the delete brake",
                                "`crmsync deletes list`, then approve or discard"))
    return checks


def _sentinel_check(found: dict[str, Any] | None) -> list[Check]:
    """Redis Sentinel: which sentinels answer and where they say the master is."""
    if not found:
        return []
    answering, silent, name = found.get("answering") or [], found.get("silent") or [], found.get("name", "?")
    if not answering:
        return [Check("redis.sentinel", "FAIL", f"no sentinel answers ({', '.join(silent)})",
                      "start the sentinels (redis-server --sentinel) or fix the hosts in [broker] url "
                      "(and broker.sentinel_password_env)")]
    if not found.get("master"):
        return [Check("redis.sentinel", "FAIL",
                      f"{len(answering)} sentinel(s) answer but know no master named {name!r}",
                      "set broker.sentinel_master to the name in the sentinels' `sentinel monitor` line")]
    detail = f"{len(answering)} of {len(answering) + len(silent)} sentinel(s) answer; master {name!r} at {found['master']}"
    if silent:
        return [Check("redis.sentinel", "WARN", f"{detail}; silent: {', '.join(silent)}",
                      "start the silent sentinels: with fewer than the quorum no failover happens")]
    return [Check("redis.sentinel", "OK", detail)]


def check_redis(probes: DoctorProbes, where: str) -> list[Check]:
    facts = _safely("redis", probes.redis)
    if isinstance(facts, Check):
        return [facts]
    if facts.get("not_redis"):
        return [Check("redis", "WARN", f"{where}: not a Redis broker; Redis checks skipped",
                      "use Redis in production ([broker] url = redis://...)")]
    sentinel = _sentinel_check(facts.get("sentinels"))
    if facts.get("error"):
        return [*sentinel, Check("redis", "FAIL", f"{where}: unreachable: {facts['error']}",
                                 "start Redis (systemctl start redis-server / docker compose up redis) "
                                 "or fix [broker] url and broker.password_env"
                                 + (" (and broker.sentinel_master: the name in the sentinels' "
                                    "`sentinel monitor` line)" if sentinel else ""))]
    checks = [*sentinel, Check("redis", "OK", f"{where}: answers PING (Redis {facts.get('version', '?')})")]
    policy = facts.get("maxmemory_policy")
    if policy == "noeviction":
        checks.append(Check("redis.eviction", "OK", "maxmemory-policy noeviction"))
    elif policy is None:
        checks.append(Check("redis.eviction", "WARN", "maxmemory-policy could not be read",
                            "make sure the server runs with maxmemory-policy noeviction"))
    else:
        # FAIL: under memory pressure Redis would drop queued tasks; the re-drive finds them only
        # after sync.redrive_after_s, and nothing says why changes arrive late.
        checks.append(Check("redis.eviction", "FAIL", f"maxmemory-policy {policy}: queued tasks may be evicted",
                            "set `maxmemory-policy noeviction` in redis.conf (or CONFIG SET maxmemory-policy "
                            "noeviction; CONFIG REWRITE)"))
    aof, rdb = facts.get("aof"), facts.get("rdb")
    if aof is None and rdb is None:
        checks.append(Check("redis.persistence", "WARN", "persistence settings could not be read",
                            "make sure the server runs with appendonly yes"))
    elif aof or rdb:
        kind = "AOF" if aof else "RDB snapshots only"
        status: Status = "OK" if aof else "WARN"
        checks.append(Check("redis.persistence", status, f"persistence on ({kind})",
                            "" if aof else "set `appendonly yes` (RDB loses the messages since the last snapshot)"))
    else:
        checks.append(Check("redis.persistence", "WARN",
                            "persistence off: a Redis restart drops queued tasks (the re-drive re-sends them "
                            "after sync.redrive_after_s)",
                            "set `appendonly yes` and `appendfsync everysec` (see deploy/redis.conf)"))
    return checks


def _credentials_fix(kind: str, facts: dict[str, Any]) -> str:
    """How to fix a sign-in (``auth``) or a missing password (``secret``), naming the keys in
    effect for that mailbox: its own ``mailbox[i].username`` / ``password_env``, else [exchange]'s."""
    user = facts.get("username_key") or "exchange.username"
    password = facts.get("password_env_key") or "exchange.password_env"
    if kind == "secret":
        return f"set the environment variable named by {password}" + (
            " (or client_secret_env)" if password.startswith("exchange.") else "")
    return f"check {user} and the password in the variable {password} names"


def _access_fix(facts: dict[str, Any], address: str) -> str:
    """How to give the account that signs in the right to this mailbox, for the access mode in effect."""
    account = facts.get("username") or "the service account"
    if facts.get("access") == "delegate":
        return (f"give {account} delegate access to {address}'s Contacts folder (Outlook: Folder permissions, "
                f"Editor; or Add-MailboxFolderPermission -Identity {address}:\\Contacts -User {account} "
                "-AccessRights Editor), or FullAccess (Add-MailboxPermission), or use access = \"impersonation\"")
    return (f"grant {account} the ApplicationImpersonation role (New-ManagementRoleAssignment "
            f"-Role ApplicationImpersonation -User {account}, scoped to the synced mailboxes), "
            "or use access = \"delegate\" with delegate access to the mailbox")


_MAILBOX_FIX = {
    "auth": _credentials_fix("auth", {}),
    "secret": _credentials_fix("secret", {}),
    "access": _access_fix({}, "the mailbox"),
    "mailbox": "check the [[mailbox]] address: Exchange does not know it",
    "folder": "create the folder under Contacts in Outlook, or start `crmsync producer` once "
              "(it creates the folder), or fix [[mailbox]] folder",
    "unreachable": "check exchange.endpoint and the network path to the server",
    "tls": "install the server's CA certificate on this host (or set verify_tls = false for a test server)",
}


def check_exchange(probes: DoctorProbes, mailboxes: Sequence[tuple[str, str]]) -> list[Check]:
    facts = _safely("exchange.endpoint", probes.exchange_endpoint)
    if isinstance(facts, Check):
        return [facts]
    kind = facts.get("kind")
    if kind == "missing":
        return [Check("exchange.endpoint", "FAIL", "exchange.endpoint is not set",
                      "set [exchange] endpoint = \"https://mail.example.com/EWS/Exchange.asmx\"")]
    if kind != "ok":
        return [Check("exchange.endpoint", "FAIL", facts.get("detail", kind or "?"),
                      _MAILBOX_FIX.get(kind or "", "check the [exchange] settings"))]
    checks = []
    endpoint = facts.get("endpoint", "")
    if facts.get("scheme") == "http":
        checks.append(Check("exchange.endpoint", "WARN", f"{endpoint} answers, over plain HTTP",
                            "use https:// so credentials and contacts are encrypted"))
    elif not facts.get("verify_tls", True):
        checks.append(Check("exchange.endpoint", "WARN", f"{endpoint} answers over TLS, certificate NOT verified",
                            "install the CA certificate and set verify_tls = true"))
    else:
        checks.append(Check("exchange.endpoint", "OK", f"{endpoint} answers over TLS, certificate verified"))
    if not mailboxes:
        checks.append(Check("exchange.mailboxes", "FAIL", "no mailbox is configured",
                            "add a [[mailbox]] table with an address, or set CRMSYNC_MAILBOXES"))
        return checks
    results = []
    for address, folder in mailboxes:
        result = _safely(f"mailbox {address}", lambda a=address, f=folder: probes.mailbox(a, f))
        results.append((address, folder, result))
    # exchange.credentials judges the service account ([exchange]); a mailbox signing in with its
    # own username / password_env is judged on its own row, with its own keys in the fix.
    kinds = [r.get("kind") for _, _, r in results if not isinstance(r, Check) and not r.get("own_credentials")]
    if "auth" in kinds or "secret" in kinds:
        bad = "secret" if "secret" in kinds else "auth"
        detail = next(r["detail"] for _, _, r in results
                      if not isinstance(r, Check) and not r.get("own_credentials") and r.get("kind") == bad)
        checks.append(Check("exchange.credentials", "FAIL", detail, _MAILBOX_FIX[bad]))
    elif any(k in ("ok", "folder", "access", "mailbox") for k in kinds):
        checks.append(Check("exchange.credentials", "OK", "the service account signs in"))
    for address, folder, result in results:
        name = f"mailbox {address}"
        if isinstance(result, Check):
            checks.append(result)
        elif result.get("kind") == "ok":
            checks.append(Check(name, "OK", f"folder {folder!r} present and readable"))
        elif result.get("kind") in ("auth", "secret") and result.get("own_credentials"):
            checks.append(Check(name, "FAIL", result.get("detail", "?"), _credentials_fix(result["kind"], result)))
        elif result.get("kind") in ("auth", "secret"):
            checks.append(Check(name, "FAIL", "not checked: the service account cannot sign in",
                                _MAILBOX_FIX[result["kind"]]))
        elif result.get("kind") == "access":
            checks.append(Check(name, "FAIL", result.get("detail", "?"), _access_fix(result, address)))
        else:
            checks.append(Check(name, "FAIL", result.get("detail", "?"),
                                _MAILBOX_FIX.get(result.get("kind") or "", "check the [exchange] settings")))
    return checks


#: Problems of the app registration itself (every Graph mailbox fails alike).
_GRAPH_APP_KINDS = ("secret", "token", "unreachable", "tls")


def _graph_fix(kind: str, facts: dict[str, Any], address: str, folder: str) -> str:
    app = facts.get("client_id") or "<client_id>"
    if kind == "secret" and "exchange.certificate_" in str(facts.get("detail", "")):
        return ("point exchange.certificate_path at a PEM file holding the app certificate's private key (readable "
                "by crmsync only) and set exchange.certificate_thumbprint to that certificate's SHA-1 thumbprint, "
                "as Entra ID shows it under App registrations > Certificates & secrets")
    return {
        "secret": "set the environment variable named by exchange.client_secret_env to the app's client secret, "
                  "or set exchange.certificate_path and exchange.certificate_thumbprint",
        "token": "check exchange.tenant_id and exchange.client_id, and the app's client secret or certificate in "
                 "Entra ID (App registrations > Certificates & secrets: an expired secret must be renewed)",
        "unreachable": "check exchange.authority and exchange.graph_url and the network path to them "
                       "(proxy, firewall)",
        "tls": "install the CA certificate that signs the server's certificate on this host (SSL_CERT_FILE)",
        "access": f"grant the app {app} the Application permission Contacts.ReadWrite (with admin consent) and "
                  f"include {address} in its RBAC for Applications scope (New-ManagementRoleAssignment "
                  f"-App {app} -Role \"Application Contacts.ReadWrite\" -CustomResourceScope <scope with the "
                  "synced mailboxes>)",
        "mailbox": f"check the [[mailbox]] address: Exchange Online does not know {address} (a mailbox still "
                   "on-premises needs api = \"ews\")",
        "folder": f"create the folder {folder!r} under Contacts in Outlook, or start `crmsync producer` once "
                  "(it creates the folder), or fix [[mailbox]] folder",
    }.get(kind, "check the [exchange] Graph settings (tenant_id, client_id, graph_url)")


def check_graph(probes: DoctorProbes, mailboxes: Sequence[tuple[str, str]]) -> list[Check]:
    """The Graph mailboxes: the app's token (``exchange.graph``), then each mailbox and folder."""
    results = [(address, folder, _safely(f"mailbox {address}", lambda a=address, f=folder: probes.graph_mailbox(a, f)))
               for address, folder in mailboxes]
    facts = [r for _, _, r in results if not isinstance(r, Check)]
    app_problem = next((r for r in facts if r.get("kind") in _GRAPH_APP_KINDS), None)
    checks: list[Check] = []
    if app_problem is not None:
        checks.append(Check("exchange.graph", "FAIL", app_problem.get("detail", "?"),
                            _graph_fix(app_problem["kind"], app_problem, "", "")))
    elif facts:
        checks.append(Check("exchange.graph", "OK", "the app gets a Graph token"))
    for address, folder, result in results:
        name = f"mailbox {address}"
        if isinstance(result, Check):
            checks.append(result)
        elif result.get("kind") == "ok":
            checks.append(Check(name, "OK", f"folder {folder!r} present and readable over Graph"))
        elif result.get("kind") in _GRAPH_APP_KINDS:
            checks.append(Check(name, "FAIL", "not checked: the app cannot get a Graph token",
                                "see the exchange.graph check"))
        else:
            checks.append(Check(name, "FAIL", result.get("detail", "?"),
                                _graph_fix(result.get("kind") or "", result, address, folder)))
    return checks


def check_workers(probes: DoctorProbes, queues: Sequence[str]) -> list[Check]:
    """FAIL unless every queue (to_exchange, to_crm, maintenance) has a worker consuming it."""
    facts = _safely("celery.workers", probes.workers)
    if isinstance(facts, Check):
        return [facts]
    if facts.get("error"):
        return [Check("celery.workers", "FAIL", f"cannot ask the workers: {facts['error']}",
                      "fix the broker first (see the redis checks)")]
    workers: dict[str, list[str]] = facts.get("workers") or {}
    if not workers:
        return [Check("celery.workers", "FAIL", "no worker answered the ping",
                      "start workers: `crmsync worker` (systemctl start crmsync-worker@main)")]
    listing = "; ".join(f"{name} ({', '.join(queues) or 'no queue'})" for name, queues in sorted(workers.items()))
    consumed = {q for found in workers.values() for q in found}
    missing = [q for q in queues if q not in consumed]
    if missing:
        names = ", ".join(repr(q) for q in missing)
        return [Check("celery.workers", "FAIL", f"{len(workers)} alive, none consumes {names}: {listing}",
                      f"start a worker on {names} (`crmsync worker` consumes every queue of [worker] "
                      f"queue_prefix; `crmsync worker -Q {','.join(missing)}` only those)")]
    return [Check("celery.workers", "OK", f"{len(workers)} alive, every queue consumed: {listing}")]


def run_checks(probes: DoctorProbes, *, crm_where: str, state_where: str, broker_where: str,
               mailboxes: Sequence[tuple[str, str]], queues: Sequence[str],
               graph: Collection[str] = ()) -> list[Check]:
    """Every check, in the order an administrator would fix them. ``*_where`` are the URLs
    without passwords; ``mailboxes`` are (address, folder) pairs; ``graph`` the addresses of
    those reached over Microsoft Graph (``api = "graph"``), probed over Graph, not EWS."""
    over_graph = [(a, f) for a, f in mailboxes if a in graph]
    over_ews = [(a, f) for a, f in mailboxes if a not in graph]
    return [
        *check_crm(probes, crm_where),
        *check_state(probes, state_where),
        *check_redis(probes, broker_where),
        *(check_exchange(probes, over_ews) if over_ews or not mailboxes else []),
        *(check_graph(probes, over_graph) if over_graph else []),
        *check_workers(probes, queues),
    ]


def failed(checks: Sequence[Check]) -> bool:
    return any(c.status == "FAIL" for c in checks)
