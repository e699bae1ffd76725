"""The composition root: settings in, wired adapters and services out.

The CLI, the Celery workers, the producers and the tests all build their parts here, so there
is one place that knows which adapter implements which port. Nothing is connected until a
part is first used (Exchange accounts are opened lazily, one per mailbox). Each mailbox is reached
over EWS or Microsoft Graph as its ``api`` (else ``exchange.api``) says.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from functools import cached_property

from sqlalchemy.engine import Engine

from crmsync.config import MailboxSettings, Settings
from crmsync.core.reconcile import Policy
from crmsync.errors import BadRecord, ConfigError
from crmsync.service.apply import SyncServices


@dataclass
class Container:
    """The process's wired parts. Build one per process (after a fork, build a new one)."""

    settings: Settings
    _accounts: dict[str, tuple[object, object]] = field(default_factory=dict)  # address -> (account, folder)
    _sides: dict[str, object] = field(default_factory=dict)                    # address -> ExchangeSide
    _graph: object | None = None                                               # GraphClient, made on first use
    _graph_folders: dict[str, str] = field(default_factory=dict)              # address -> Graph folder id
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # databases ---------------------------------------------------------------------------
    @cached_property
    def crm_engine(self) -> Engine:
        from crmsync.adapters.database import make_engine

        return make_engine(self.settings.crm.dsn())

    @cached_property
    def state_engine(self) -> Engine:
        from crmsync.adapters.database import make_engine

        return make_engine(self.settings.state.dsn())

    @cached_property
    def crm(self):
        from crmsync.adapters.crm.sqlalchemy_crm import SqlCrm

        return SqlCrm(self.crm_engine)

    @cached_property
    def store(self):
        from crmsync.adapters.state.sqlalchemy_store import SqlStateStore

        return SqlStateStore(self.state_engine)

    @cached_property
    def changelog(self):
        from crmsync.adapters.crm.changelog import Changelog

        return Changelog(self.crm_engine)

    # exchange ----------------------------------------------------------------------------
    def mailbox_settings(self, address: str) -> MailboxSettings:
        return self.settings.mailbox(address)

    def exchange_account(self, address: str):
        """The exchangelib account and sync folder of one mailbox, opened once per process."""
        with self._lock:
            if address not in self._accounts:
                from crmsync.adapters.exchange.ews.connect import connect, connect_owner, open_folder

                mbox = self.settings.effective(address)
                if mbox.only_categories:   # before any contact crosses the wire
                    from crmsync.logging_setup import hide_unstamped_items

                    hide_unstamped_items()
                # the mailbox's own access / username / password_env, else [exchange]'s
                settings = self.settings.exchange_for(address)
                # another mailbox's folder: its owner's account, by this mailbox's login (delegate)
                account = (connect_owner(settings, mbox.folder_owner) if mbox.folder_owner
                           else connect(settings, mbox.address))
                try:
                    folder = open_folder(account, mbox.folder_path, create=bool(mbox.create_folder),
                                         public=mbox.public_folder, label=mbox.address)
                except BadRecord as exc:
                    # Not a record's fault: the events must be retried, not dead-lettered.
                    raise ConfigError(str(exc)) from None
                self._accounts[address] = (account, folder)
            return self._accounts[address]

    def api(self, address: str) -> str:
        """"ews" or "graph" for this mailbox (its own ``api``, else ``exchange.api``)."""
        return self.settings.api_of(address)

    def graph_client(self):
        """The process's Graph client (one app registration, one token for every mailbox)."""
        with self._lock:
            if self._graph is None:
                from crmsync.adapters.exchange.graph.connect import connect

                # the mailbox limit is shared by every process through the broker's Redis
                self._graph = connect(self.settings.exchange, shared_limit_url=self.settings.broker.dsn(),
                                      shared_limit_master=self.settings.broker.sentinel_master,
                                      shared_limit_sentinel_password=self.settings.broker.sentinel_password())
            return self._graph

    def graph_folder(self, address: str) -> str:
        """The id of one mailbox's sync folder over Graph, found once per process; created only
        when ``create_folder`` (the mailbox's, else ``[sync]``'s) is true, otherwise a missing
        folder is MailboxUnavailable (reported and retried, as over EWS)."""
        client = self.graph_client()
        with self._lock:
            if address not in self._graph_folders:
                from crmsync.adapters.exchange.graph.connect import open_folder

                mbox = self.settings.effective(address)
                try:
                    self._graph_folders[address] = open_folder(client, mbox.address, mbox.folder,
                                                               create=bool(mbox.create_folder))
                except BadRecord as exc:
                    raise ConfigError(str(exc)) from None
            return self._graph_folders[address]

    def exchange_side(self, address: str):
        if self.api(address) == "graph":
            return self._graph_side(address)
        from crmsync.adapters.exchange.ews.side import EwsExchange

        account, folder = self.exchange_account(address)
        with self._lock:
            if address not in self._sides:
                self._sides[address] = EwsExchange(
                    account, folder,
                    private_sensitivities=frozenset(self.settings.effective(address).private_sensitivities or ()),
                    categories=self.settings.effective(address).categories or (),
                    only_categories=self.settings.effective(address).only_categories or (),
                    mailbox=self.mailbox_settings(address).address)
            return self._sides[address]

    def _graph_side(self, address: str):
        from crmsync.adapters.exchange.graph.side import GraphExchange

        folder_id = self.graph_folder(address)
        with self._lock:
            if address not in self._sides:
                self._sides[address] = GraphExchange(
                    self._graph, self.mailbox_settings(address).address, folder_id,
                    private_sensitivities=frozenset(self.settings.effective(address).private_sensitivities or ()),
                    only_categories=self.settings.effective(address).only_categories or ())
            return self._sides[address]

    def exchange_feed(self, address: str):
        if self.api(address) == "graph":
            from crmsync.adapters.exchange.graph.feed import GraphFeed

            folder_id = self.graph_folder(address)
            return GraphFeed(self.graph_client(), self.mailbox_settings(address).address, folder_id)
        from crmsync.adapters.exchange.ews.feed import ExchangeFeed

        account, folder = self.exchange_account(address)
        return ExchangeFeed(account, folder, notifications=self.settings.sync.notifications,
                            mailbox=self.mailbox_settings(address).address)

    # services ----------------------------------------------------------------------------
    @cached_property
    def policy(self) -> Policy:
        return Policy(conflict=self.settings.sync.conflict_policy, region=self.settings.sync.phone_region)

    def policy_for(self, address: str) -> Policy:
        """One mailbox's policy: the global one with its direction and field rules."""
        from crmsync.core.deletes import DeleteRules

        mbox = self.settings.effective(address)
        deletes = DeleteRules(on_exchange_delete=mbox.on_exchange_delete, on_crm_delete=mbox.on_crm_delete,
                              max_count=mbox.max_delete_count, max_percent=mbox.max_delete_percent,
                              min_count_for_percent=mbox.min_delete_count_for_percent,
                              window_s=mbox.delete_window_s)
        from crmsync.core.crm_mapping import ACCOUNT_COLUMNS

        field_of = {column: name for name, column in ACCOUNT_COLUMNS.items()}
        push_filter = tuple((field_of[rule.column], frozenset(rule.in_)) for rule in mbox.push_filter or ())
        return replace(self.policy, conflict=mbox.conflict_policy, direction=mbox.direction,
                       field_rules=mbox.fields or {}, deletes=deletes, push_filter=push_filter,
                       conflict_fields=mbox.conflict_fields or {}, only_active=mbox.only_active,
                       on_new_record=mbox.on_new_record or "match-then-create")

    @cached_property
    def held_deletes(self):
        from crmsync.adapters.state.held import SqlHeldDeletes

        return SqlHeldDeletes(self.state_engine)

    @cached_property
    def mailbox_health(self):
        """Which mailboxes are unavailable now (access denied, folder missing), for status."""
        from crmsync.adapters.state.health import SqlMailboxHealth

        return SqlMailboxHealth(self.state_engine)

    @cached_property
    def held_conflicts(self):
        from crmsync.adapters.state.held import SqlHeldConflicts

        return SqlHeldConflicts(self.state_engine)

    @cached_property
    def review_queue(self):
        from crmsync.adapters.state.review import SqlReviewQueue

        return SqlReviewQueue(self.state_engine)

    @cached_property
    def sync_services(self) -> SyncServices:
        return SyncServices(
            store=self.store, crm=self.crm, exchange_for=self.exchange_side, policy=self.policy,
            lease_ttl_s=self.settings.sync.lease_ttl_s, call_budget_s=self.settings.exchange.call_budget_s,
            new_account_no=self.crm.new_account_no, policy_for=self.policy_for, held=self.held_deletes,
            conflicts=self.held_conflicts, review=self.review_queue,
        )

    def doctor_probes(self) -> DoctorAdapters:
        """The probes ``crmsync doctor`` judges (crmsync.service.doctor.DoctorProbes)."""
        return DoctorAdapters(self)

    def dispose(self) -> None:
        if self._graph is not None:
            self._graph.close()
        for name in ("crm_engine", "state_engine"):
            engine = self.__dict__.get(name)
            if engine is not None:
                engine.dispose()


@dataclass
class DoctorAdapters:
    """crmsync.service.doctor.DoctorProbes over this container's settings and engines."""

    container: Container

    def crm(self) -> dict:
        from crmsync.adapters.diagnostics import probe_crm

        return probe_crm(self.container.crm_engine)

    def state(self) -> dict:
        from crmsync.adapters.diagnostics import probe_state

        return probe_state(self.container.state_engine)

    def redis(self) -> dict:
        from crmsync.adapters.diagnostics import probe_redis

        broker = self.container.settings.broker
        return probe_redis(broker.dsn(), master=broker.sentinel_master, sentinel_password=broker.sentinel_password())

    def exchange_endpoint(self) -> dict:
        from crmsync.adapters.exchange.ews.probe import probe_endpoint

        return probe_endpoint(self.container.settings.exchange)

    def mailbox(self, address: str, folder: str) -> dict:
        from crmsync.adapters.exchange.ews.probe import probe_mailbox

        settings = self.container.settings
        exchange = settings.exchange_for(address)
        facts = probe_mailbox(exchange, address, folder, owner=settings.mailbox(address).folder_owner)
        return {**facts, **self.credential_keys(address), "access": exchange.access, "username": exchange.username}

    def graph_mailbox(self, address: str, folder: str) -> dict:
        from crmsync.adapters.exchange.graph.probe import probe_graph_mailbox

        settings = self.container.settings
        return {**probe_graph_mailbox(settings.exchange, address, folder), "client_id": settings.exchange.client_id}

    def credential_keys(self, address: str) -> dict:
        """The config keys this mailbox signs in with (``mailbox[i].username`` where the i-th
        [[mailbox]] sets its own, else ``exchange.username``; the same for ``password_env``),
        so a failure's fix names the option in effect. ``own_credentials``: either is its own."""
        settings = self.container.settings
        index = next(i for i, m in enumerate(settings.mailboxes) if m.address.lower() == address.lower())
        mbox = settings.mailboxes[index]
        keys = {f"{key}_key": (f"mailbox[{index}].{key}" if getattr(mbox, key) is not None else f"exchange.{key}")
                for key in ("username", "password_env")}
        return {**keys, "own_credentials": any(k.startswith("mailbox[") for k in keys.values())}

    def workers(self) -> dict:
        from crmsync.adapters.diagnostics import probe_workers

        return probe_workers(self.container.settings)


_per_process: dict[int, Container] = {}


def container_for(settings: Settings) -> Container:
    """This process's container (a forked Celery child gets its own connections)."""
    pid = os.getpid()
    found = _per_process.get(pid)
    if found is None or found.settings is not settings:
        found = Container(settings)
        _per_process.clear()
        _per_process[pid] = found
    return found
