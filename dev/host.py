"""Calling the app's functions as the Functions host would (Core Tools can't be installed here): the real
function code, with real trigger inputs, against real storage. `fire_blob_trigger` and
`deliver_queue_messages` serve the demo and the tests; `LocalHost` is what `make serve` runs: the host's
blob scanner with receipts, its queue listener with dequeue counts and poison queues, its timers with
their status and past-due flag, and its admin call to run any non-HTTP function now.

Where the host keeps state, this keeps the same state in the same places (container `azure-webjobs-hosts`:
`blobreceipts/{hostId}/{function}/{ETag}/{container}/{blob}` and `timers/{hostId}/{function}/status`;
queues `webjobs-blobtrigger-poison` and `{queue}-poison`), so a restart carries on where it stopped."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobClient
from azure.storage.queue import QueueClient
from croniter import croniter

from shared.settings import env_name, get_settings
from shared.storage import BlobStore, StorageAccount

log = logging.getLogger("host")
HOST_ID = "audience-bridge-local"
HOSTS_CONTAINER = "azure-webjobs-hosts"
BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"
MAX_DEQUEUE_COUNT = 5  # host.json's queues.maxDequeueCount default; blob triggers retry as many times
PAST_DUE = dt.timedelta(seconds=30)  # a timer that fires this much later than scheduled is past due
RUNNING_VISIBILITY = 600  # seconds a message stays invisible while its function runs (the function timeout)


def _user(function) -> Callable:
    """The user function of a Blueprint's builder, of an indexed function, or the function itself."""
    if hasattr(function, "build"):
        return function.build().get_user_function()
    return function.get_user_function() if hasattr(function, "get_user_function") else function


def fire_blob_trigger(function, blobs: BlobStore, path: str) -> None:
    """Run a blob-trigger function on the blob at `path` with what the host and worker pass for its parameter's
    type: a `BlobClient` (the SDK-type binding: the host reads nothing) or an `InputStream` (the content, name
    and ETag, read by the host)."""
    user = _user(function)
    [kind] = [t for name, t in typing.get_type_hints(user).items() if name != "return"]
    if isinstance(kind, type) and issubclass(kind, BlobClient):
        user(blobs.container.get_blob_client(path))  # what the extension's get_sdk_type() returns
        return
    data = blobs.get(path)
    stream = func.blob.InputStream(
        data=data,
        name=f"{blobs.name}/{path}",
        uri=f"{blobs.container.url}/{path}",
        length=len(data),
        blob_properties={"ETag": blobs.etag(path)},
    )
    user(stream)


def deliver_queue_messages(function, queue: QueueClient, *, limit: int = 32) -> int:
    """Deliver waiting messages to a queue-trigger function, deleting each after it succeeds (as the host
    does; a failure leaves the message to become visible again). Returns how many were delivered."""
    delivered = 0
    for message in queue.receive_messages(max_messages=limit, visibility_timeout=60):
        _user(function)(_queue_message(message))
        queue.delete_message(message)
        delivered += 1
    return delivered


def _queue_message(message) -> QueueMessage:
    body = message.content.encode() if isinstance(message.content, str) else message.content
    return QueueMessage(id=message.id, body=body, pop_receipt=message.pop_receipt, dequeue_count=message.dequeue_count)


def resolve(value: str) -> str:
    """A binding value with its %SETTING% placeholders resolved from the app settings, as the host does."""
    return re.sub(r"%(\w+)%", lambda m: os.environ.get(m.group(1)) or _default(m.group(1)), value)


def _default(name: str) -> str:
    settings = get_settings()
    for field_name in type(settings).model_fields:
        if env_name(field_name) == name:
            return str(getattr(settings, field_name))
    raise KeyError(f"setting {name} is not defined")


@dataclass
class Trigger:
    """One indexed non-HTTP function and its binding, settings resolved."""

    name: str
    kind: str  # blobTrigger | queueTrigger | timerTrigger
    binding: dict[str, Any]
    user_function: Callable

    @property
    def blob_container(self) -> str:
        return resolve(self.binding["path"]).split("/", 1)[0]

    @property
    def blob_pattern(self) -> re.Pattern[str]:
        """The path after the container: `{x}` is one folder, the last one the rest of the name."""
        rest = resolve(self.binding["path"]).split("/", 1)[1]
        parts = re.split(r"(\{\w+\})", rest)
        names = [p for p in parts if p.startswith("{")]
        out = ""
        for p in parts:
            if p.startswith("{"):
                out += f"(?P<{p[1:-1]}>.+)" if p == names[-1] else f"(?P<{p[1:-1]}>[^/]+)"
            else:
                out += re.escape(p)
        return re.compile(out)


class LocalHost:
    """The host's triggers over the app's indexed functions, one `poll` at a time."""

    def __init__(self, functions: list, account: StorageAccount) -> None:
        """`functions`: what `app.get_functions()` indexed (it can be asked once per app)."""
        self.account = account
        self.triggers = {
            f.get_function_name(): Trigger(
                f.get_function_name(),
                f.get_trigger().get_dict_repr()["type"],
                f.get_trigger().get_dict_repr(),
                _user(f),
            )
            for f in functions
            if f.get_trigger().get_dict_repr()["type"] != "httpTrigger"
        }
        self.hosts = BlobStore(account.container(HOSTS_CONTAINER))
        self._done: set[tuple[str, str, str, str]] = set()
        self._failures: Counter[tuple[str, str, str, str]] = Counter()
        self._lock = threading.Lock()

    def of_kind(self, kind: str) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.kind == kind]

    def poll(self, now: dt.datetime) -> None:
        """One round: due timers, new blobs, waiting messages. A function's failure never stops the round."""
        for step in (lambda: self.run_timers(now), self.scan_blobs, self.listen_queues):
            try:
                step()
            except Exception:  # noqa: BLE001 - storage hiccups: the next round tries again
                log.exception("host poll")

    # Blob triggers ---------------------------------------------------------------------------------

    def scan_blobs(self) -> int:
        """Fire each blob trigger once per blob version (name and ETag): a receipt marks it done, across
        restarts. A failing blob is tried again each round, and after MAX_DEQUEUE_COUNT failures goes to the
        poison queue with a receipt, as the host does. Returns how many functions ran."""
        fired = 0
        for trigger in self.of_kind("blobTrigger"):
            container = trigger.blob_container
            blobs = BlobStore(self.account.container(container))
            pattern = trigger.blob_pattern
            for blob in blobs.listing():
                key = (trigger.name, blob.etag.strip('"'), container, blob.name)
                if key in self._done or not pattern.fullmatch(blob.name):
                    continue
                receipt = f"blobreceipts/{HOST_ID}/Host.Functions.{key[0]}/{key[1]}/{container}/{blob.name}"
                if self.hosts.exists(receipt):
                    self._done.add(key)
                    continue
                fired += 1
                try:
                    fire_blob_trigger(trigger.user_function, blobs, blob.name)
                except Exception:  # noqa: BLE001 - the host logs it and tries again
                    self._failures[key] += 1
                    log.exception("%s on %s/%s: try %d failed", trigger.name, container, blob.name, self._failures[key])
                    if self._failures[key] < MAX_DEQUEUE_COUNT:
                        continue
                    self._poison_blob(trigger, key)
                self.hosts.put(receipt, b"")
                self._done.add(key)
        return fired

    def _poison_blob(self, trigger: Trigger, key: tuple[str, str, str, str]) -> None:
        message = {
            "Type": "BlobTrigger",
            "FunctionId": f"Host.Functions.{trigger.name}",
            "BlobType": "BlockBlob",
            "ContainerName": key[2],
            "BlobName": key[3],
            "ETag": f'"{key[1]}"',
        }
        self.account.queue(BLOB_POISON_QUEUE).send_message(json.dumps(message))
        log.error(
            "%s on %s/%s failed %d times: sent to %s",
            trigger.name,
            key[2],
            key[3],
            MAX_DEQUEUE_COUNT,
            BLOB_POISON_QUEUE,
        )

    # Queue triggers --------------------------------------------------------------------------------

    def listen_queues(self) -> int:
        """Deliver waiting messages, with their dequeue count. A failed message is visible again at once
        (host.json's visibilityTimeout of 0); one that failed MAX_DEQUEUE_COUNT times moves to
        `{queue}-poison`. Returns how many functions ran."""
        ran = 0
        for trigger in self.of_kind("queueTrigger"):
            name = resolve(trigger.binding["queueName"])
            queue = self.account.queue(name)
            for message in queue.receive_messages(max_messages=16, visibility_timeout=RUNNING_VISIBILITY):
                ran += 1
                try:
                    trigger.user_function(_queue_message(message))
                except Exception:  # noqa: BLE001 - the host logs it and tries again
                    log.exception(
                        "%s: message %s failed (dequeue count %d)", trigger.name, message.id, message.dequeue_count
                    )
                    if message.dequeue_count >= MAX_DEQUEUE_COUNT:
                        self.account.queue(f"{name}-poison").send_message(message.content)
                        queue.delete_message(message)
                        log.error("%s: message %s sent to %s-poison", trigger.name, message.id, name)
                    else:
                        queue.update_message(message, visibility_timeout=0)
                    continue
                queue.delete_message(message)
        return ran

    # Timers ----------------------------------------------------------------------------------------

    def run_timers(self, now: dt.datetime) -> int:
        """Fire every timer whose next occurrence has come, once however many it missed, past due when it
        fires late (after downtime). A timer seen for the first time is scheduled from now. Returns how many
        ran."""
        ran = 0
        for trigger in self.of_kind("timerTrigger"):
            schedule = resolve(trigger.binding["schedule"])
            status_name = f"timers/{HOST_ID}/Host.Functions.{trigger.name}/status"
            status = json.loads(self.hosts.get(status_name)) if self.hosts.exists(status_name) else None
            if status is None:
                due = trigger.binding.get("runOnStartup") and now or None
                self._write_status(status_name, last=None, schedule=schedule, now=now)
                if due is None:
                    continue
                scheduled = now
            else:
                scheduled = dt.datetime.fromisoformat(status["Next"])
                if now < scheduled:
                    continue
                self._write_status(status_name, last=scheduled, schedule=schedule, now=now)
            ran += 1
            self.fire_timer(trigger, past_due=now - scheduled > PAST_DUE, last=status and status.get("Last"))
        return ran

    def fire_timer(self, trigger: Trigger, *, past_due: bool, last: str | None = None) -> None:
        request = TimerRequest(past_due=past_due, schedule_status={"Last": last}, schedule={"AdjustForDST": True})
        try:
            trigger.user_function(request)
        except Exception:  # noqa: BLE001 - the host logs a failed timer run; the schedule goes on
            log.exception("timer %s failed", trigger.name)

    def _write_status(self, name: str, *, last: dt.datetime | None, schedule: str, now: dt.datetime) -> None:
        following = croniter(schedule, now, second_at_beginning=True).get_next(dt.datetime)
        status = {
            "Last": last.isoformat() if last else None,
            "Next": following.isoformat(),
            "LastUpdated": now.isoformat(),
        }
        self.hosts.put(name, json.dumps(status).encode())

    # The admin call --------------------------------------------------------------------------------

    def invoke(self, name: str, data: str = "") -> None:
        """`POST /admin/functions/{name}` with `{"input": ...}`: run a non-HTTP function now. A timer gets a
        plain (not past due) request, a queue trigger `input` as the message, a blob trigger `input` as
        `container/blob`."""
        trigger = self.triggers.get(name)
        if trigger is None:
            raise KeyError(name)
        if trigger.kind == "timerTrigger":
            trigger.user_function(TimerRequest(past_due=False))
        elif trigger.kind == "queueTrigger":
            trigger.user_function(QueueMessage(id="admin", body=data.encode(), dequeue_count=1))
        else:
            container, _, blob = data.partition("/")
            fire_blob_trigger(trigger.user_function, BlobStore(self.account.container(container)), blob)
