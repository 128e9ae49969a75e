"""A program that uses the SDK as its users do, for pyright only (never
run): make test type-checks it strictly, so the SDK's public types stay
precise enough to check their code against."""

from __future__ import annotations

from typing import List, Union

from typing_extensions import assert_type

from nullspace import (
    AsyncCommandHandle,
    AsyncFileStream,
    AsyncMachine,
    AsyncPtyHandle,
    AsyncWatchHandle,
    Client,
    CommandHandle,
    CommandResult,
    EntryInfo,
    FileEvent,
    FileStream,
    Lease,
    Machine,
    MachineInfo,
    MachineURL,
    Metric,
    Monitor,
    NullspaceError,
    OutputChunk,
    PtyHandle,
    PtySize,
    Snapshot,
    Template,
    WatchHandle,
    WriteInfo,
)


def blocking(client: Client, flag: bool) -> None:
    machine = Machine.create(template="base", timeout=600, on_timeout="pause", auto_resume=True, client=client)
    assert_type(machine.id, str)
    assert_type(machine.pause(), Snapshot)
    assert_type(Machine.connect(machine.id), Machine)
    assert_type(Machine.get_info_by_id(machine.id), MachineInfo)
    assert_type(machine.set_timeout(120, timeout_action="destroy"), Lease)
    assert_type(machine.get_metrics(), List[Metric])
    assert_type(machine.get_url(8080), MachineURL)
    assert_type(machine.fork(2), List[Machine])
    assert_type(machine.fork(2, idempotency_key="fork-1"), List[Machine])
    assert_type(machine.create_snapshot(name="web", idempotency_key="snap-1"), Snapshot)
    assert_type(Machine.create(template="base", idempotency_key="job-1", client=client), Machine)
    assert_type(machine.files.read("/x"), str)
    assert_type(machine.files.read("/x", format="bytes"), bytes)
    assert_type(machine.files.read("/x", format="stream"), FileStream)
    assert_type(machine.files.write("/x", b"data"), WriteInfo)
    assert_type(machine.files.list("/"), List[EntryInfo])
    assert_type(machine.files.stat("/x").owner, str)
    assert_type(client.templates.build("mine", tarball="rootfs.tar.gz", steps=["true"]), Template)
    with open("rootfs.tar", "rb") as tarball:
        assert_type(client.templates.build("mine", tarball=tarball).state, str)
    assert_type(machine.commands.run("echo hi", shell=True), CommandResult)
    handle = machine.commands.run("sleep 10", background=True)
    assert_type(handle, CommandHandle)
    for chunk in handle:
        assert_type(chunk, OutputChunk)
    assert_type(handle.wait().exit_code, int)
    assert_type(machine.commands.run("true", background=flag), Union[CommandResult, CommandHandle])
    for metric in Monitor(machine):
        assert_type(metric.cpu_used_pct, float)
    for info in Machine.list(metadata={"user": "42"}):
        assert_type(info.status, str)
    with machine.keep_alive(timeout_secs=300):
        pass
    t = machine.pty.create(PtySize(rows=30, cols=100), on_data=lambda b: None)
    assert_type(t, PtyHandle)
    t.send_stdin(b"\x03")
    t.resize(PtySize(rows=40, cols=120))
    with machine.files.watch_dir("/workspace", recursive=True) as w:
        assert_type(w, WatchHandle)
        for ev in w:
            assert_type(ev, FileEvent)
        assert_type(w.get_new_events(), List[FileEvent])
    try:
        machine.commands.run("false", check=True)
    except NullspaceError as e:
        assert_type(e.code, str)
        assert_type(e.retryable, bool)


async def asynchronous() -> None:
    machine = await AsyncMachine.create(template="base")
    assert_type(await machine.pause(), Snapshot)
    assert_type(await machine.files.read("/x"), str)
    assert_type(await machine.files.read("/x", format="stream"), AsyncFileStream)
    assert_type(await machine.commands.run("echo"), CommandResult)
    handle = await machine.commands.run("sleep 1", background=True)
    assert_type(handle, AsyncCommandHandle)
    async for chunk in handle:
        assert_type(chunk.data, str)
    async with machine.keep_alive():
        pass
    async for info in AsyncMachine.list():
        assert_type(info, MachineInfo)
    at = await machine.pty.create(on_data=lambda b: None)
    assert_type(at, AsyncPtyHandle)
    aw = await machine.files.watch_dir("/workspace")
    assert_type(aw, AsyncWatchHandle)
    async for aev in aw:
        assert_type(aev, FileEvent)
    await aw.stop()
