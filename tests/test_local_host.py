"""`make serve`'s host (`dev.host.LocalHost`) behaves as the Functions host does: a blob fires once per
version, across restarts, and goes to the poison queue after five failures; a queue message is retried
with its dequeue count, then poisoned; a timer fires on its schedule, once and past due after downtime;
the admin call runs any non-HTTP function now."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import azure.functions as func
import pytest

from dev.host import BLOB_POISON_QUEUE, HOSTS_CONTAINER, MAX_DEQUEUE_COUNT, LocalHost
from shared.storage import BlobStore
from tests.conftest import NOW


class Calls:
    def __init__(self) -> None:
        self.blobs: list[tuple[str, bytes]] = []
        self.messages: list[tuple[str, int]] = []
        self.timers: list[bool] = []
        self.fail = False


@pytest.fixture
def world(account):
    """A small app with one trigger of each kind on this test's own container, queue and schedule."""
    tag = uuid.uuid4().hex[:8]
    calls, app = Calls(), func.FunctionApp()
    container, queue = f"drop-{tag}", f"work-{tag}"

    @app.function_name("on_drop")
    @app.blob_trigger(arg_name="blob", path=f"{container}/{{folder}}/{{name}}", connection="AzureWebJobsStorage")
    def on_drop(blob: func.InputStream) -> None:
        calls.blobs.append((blob.name, blob.read()))
        if calls.fail:
            raise RuntimeError("the function failed")

    @app.function_name("on_work")
    @app.queue_trigger(arg_name="message", queue_name=queue, connection="AzureWebJobsStorage")
    def on_work(message: func.QueueMessage) -> None:
        calls.messages.append((message.get_body().decode(), message.dequeue_count))
        if calls.fail:
            raise RuntimeError("the function failed")

    @app.function_name("every_five_minutes")
    @app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False)
    def every_five_minutes(timer: func.TimerRequest) -> None:
        calls.timers.append(timer.past_due)

    functions = app.get_functions()
    host = LocalHost(functions, account)
    return host, calls, BlobStore(account.container(container)), account.queue(queue), functions


def test_a_blob_fires_once_per_version_and_a_restarted_host_remembers(world, account):
    host, calls, drop, _, functions = world
    drop.put("a/one.csv", b"1")
    drop.put("top-level.csv", b"not under a folder: the path does not match")
    assert host.scan_blobs() == 1 and host.scan_blobs() == 0
    restarted = LocalHost(functions, account)
    assert restarted.scan_blobs() == 0  # the receipt is in storage
    drop.put("a/one.csv", b"2")  # a new version
    assert restarted.scan_blobs() == 1
    assert calls.blobs == [(f"{drop.name}/a/one.csv", b"1"), (f"{drop.name}/a/one.csv", b"2")]
    receipts = list(BlobStore(account.container(HOSTS_CONTAINER)).names("blobreceipts/"))
    assert len(receipts) == 2 and all("Host.Functions.on_drop" in r for r in receipts)


def test_a_failing_blob_is_tried_five_times_then_poisoned(world, account):
    host, calls, drop, _, _ = world
    calls.fail = True
    drop.put("a/bad.csv", b"x")
    for _ in range(MAX_DEQUEUE_COUNT + 2):
        host.scan_blobs()
    assert len(calls.blobs) == MAX_DEQUEUE_COUNT
    [poison] = account.queue(BLOB_POISON_QUEUE).receive_messages(max_messages=32)
    message = json.loads(poison.content)
    assert (message["FunctionId"], message["ContainerName"], message["BlobName"]) == (
        "Host.Functions.on_drop",
        drop.name,
        "a/bad.csv",
    )
    account.queue(BLOB_POISON_QUEUE).delete_message(poison)


def test_a_failing_message_is_retried_with_its_dequeue_count_then_poisoned(world, account):
    host, calls, _, queue, _ = world
    calls.fail = True
    queue.send_message("job-1")
    for _ in range(MAX_DEQUEUE_COUNT + 2):
        host.listen_queues()
    assert calls.messages == [("job-1", n) for n in range(1, MAX_DEQUEUE_COUNT + 1)]
    [poisoned] = account.queue(f"{queue.queue_name}-poison").receive_messages()
    assert poisoned.content == "job-1" and not list(queue.receive_messages())


def test_a_timer_fires_on_its_schedule_and_once_past_due_after_downtime(world):
    host, calls, *_ = world
    assert host.run_timers(NOW) == 0  # first seen: scheduled for 12:05
    assert host.run_timers(NOW + dt.timedelta(minutes=4)) == 0
    assert host.run_timers(NOW + dt.timedelta(minutes=5, seconds=2)) == 1
    assert host.run_timers(NOW + dt.timedelta(minutes=5, seconds=4)) == 0
    # The host was down for an hour: one run, past due, then the schedule goes on from now.
    assert host.run_timers(NOW + dt.timedelta(hours=1, minutes=7)) == 1
    assert host.run_timers(NOW + dt.timedelta(hours=1, minutes=9)) == 0
    assert calls.timers == [False, True]


def test_the_admin_call_runs_any_non_http_function_now(world):
    host, calls, drop, *_ = world
    drop.put("b/x.csv", b"hello")
    host.invoke("every_five_minutes")
    host.invoke("on_work", "by hand")
    host.invoke("on_drop", f"{drop.name}/b/x.csv")
    assert calls.timers == [False] and calls.messages == [("by hand", 1)] and calls.blobs[-1][1] == b"hello"
    with pytest.raises(KeyError):
        host.invoke("nope")
