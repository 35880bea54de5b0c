"""`serve`: vLLM on a loopback port and the proxy on the public one, living and dying together."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ctypes
import io
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

import httpx
import psutil
import pluggy

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.manager import plan_launch
from vllm_paddle_ocr.plugin.records import LaunchPlan, ServeRequest

from .gpu_lock import gpu_start_lock

log = logging.getLogger("vllm_paddle_ocr.supervisor")

TAIL_LINES = 40
KILL_WAIT_S = 3.0
WATCH_INTERVAL_S = 0.2
# Longest vLLM output line read whole; a longer one is passed on in pieces (its pipe must never stall).
LINE_LIMIT = 1 << 20
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class StartupFailed(VllmPaddleOcrError):
    """vLLM or the proxy could not start; the message carries vLLM's last lines."""


def _libc_prctl(option: int, value: int) -> None:
    """Linux prctl, best effort: elsewhere the psutil sweep still ends the tree."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value, 0, 0, 0)


def _child_preexec() -> None:
    """In vLLM's process: die with the supervisor even if it is killed with SIGKILL."""
    _libc_prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def warmup_payload(model: str) -> dict[str, Any]:
    """A real chat request with a small image: only an engine that answers it is ready."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (112, 56), "white")
    ImageDraw.Draw(image).rectangle((8, 20, 100, 36), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "model": model,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "OCR:"}]}
        ],
        "max_completion_tokens": 4,
        "temperature": 0,
    }


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the public port before vLLM starts, so a taken port fails fast and clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupFailed(f"cannot listen on {host}:{port}: {exc.strerror}; pick a free --port") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def kill_tree(root_pid: int | None, *, wait_s: float = KILL_WAIT_S) -> list[int]:
    """End a process and every descendant (and any orphan re-parented to us): SIGTERM, then SIGKILL."""
    procs: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        if root_pid is not None:
            root = psutil.Process(root_pid)
            procs[root.pid] = root
            procs.update({p.pid: p for p in root.children(recursive=True)})
    with contextlib.suppress(psutil.Error):
        procs.update({p.pid: p for p in psutil.Process().children(recursive=True)})
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=wait_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=wait_s)
    return sorted(procs)


class Supervisor:
    """Runs vLLM and the proxy; the first to die (or a signal) ends both."""

    def __init__(self, plan: LaunchPlan) -> None:
        self.plan = plan
        self.tasks: set[asyncio.Task] = set()  # referenced so the loop does not drop them
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.state: Any = None

    # -- vLLM ---------------------------------------------------------------------------------
    async def start_vllm(self) -> None:
        """Start vLLM through this Python, its output prefixed onto ours."""
        env = {**os.environ, **self.plan.env}
        if self.plan.proxy.api_key is not None:  # vLLM on loopback asks for the proxy's key too
            env["VLLM_API_KEY"] = self.plan.proxy.api_key.get_secret_value()
        log.info("starting vLLM: %s", " ".join(self.plan.vllm_argv))
        self.proc = await asyncio.create_subprocess_exec(
            *self.plan.vllm_argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            preexec_fn=_child_preexec,
            limit=LINE_LIMIT,
        )
        for stream, out in ((self.proc.stdout, sys.stdout), (self.proc.stderr, sys.stderr)):
            self.spawn(self._pump(stream, out))

    def spawn(self, coro: Any) -> asyncio.Task:
        """A background task that lives as long as the supervisor."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _pump(self, stream: asyncio.StreamReader | None, out: Any) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line beyond LINE_LIMIT: take what is buffered and go on
                line = await stream.read(LINE_LIMIT)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(text)
            out.write(f"[vllm] {text}\n")
            out.flush()

    def last_lines(self) -> str:
        """vLLM's last output lines, for an error that must not be buried."""
        return "\n".join(f"  {line}" for line in self.tail) or "  (vLLM printed nothing)"

    async def wait_ready(self) -> None:
        """Poll vLLM until it answers a real warm-up chat request; fail if it dies or times out."""
        assert self.proc is not None
        url = self.plan.proxy.upstream_url
        deadline = time.monotonic() + self.plan.proxy.ready_timeout_s
        payload = warmup_payload(self.plan.proxy.served_model_name)
        key = self.plan.proxy.api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else None
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0), headers=headers) as client:
            healthy = False
            while time.monotonic() < deadline:  # a death is reported by watch_vllm, which stops us
                try:
                    if not healthy:
                        healthy = (await client.get(f"{url}/health")).status_code == 200
                    if healthy:
                        answer = await client.post(f"{url}/v1/chat/completions", json=payload, timeout=120.0)
                        if answer.status_code == 200 and answer.json().get("choices"):
                            return
                        raise StartupFailed(
                            f"vLLM is up but its warm-up request failed ({answer.status_code}): "
                            f"{answer.text[:500]}. Its last lines:\n{self.last_lines()}"
                        )
                except httpx.TransportError:
                    healthy = False
                await asyncio.sleep(0.5)
        raise StartupFailed(
            f"vLLM did not answer its warm-up request within {self.plan.proxy.ready_timeout_s:.0f} s "
            f"(--ready-timeout). Its last lines:\n{self.last_lines()}"
        )

    async def start_up(self) -> Any:
        """vLLM's warm-up and the layout model's load, side by side; the first failure ends both.

        A layout model on the GPU loads after vLLM answers instead: vLLM checks the free memory when it
        starts and again after profiling, and would count a neighbour loading meanwhile as its own use.
        The per-GPU start lock is held until both are done.
        """
        if self.plan.proxy.layout_dir is not None and self.plan.proxy.layout_device.startswith("cuda"):
            await self.wait_ready()
            return await asyncio.to_thread(_load_detector, self.plan)
        _, detector = await asyncio.gather(self.wait_ready(), asyncio.to_thread(_load_detector, self.plan))
        return detector

    # -- lifecycle ------------------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        """SIGTERM/SIGINT: stop accepting, let in-flight requests finish, then end vLLM."""
        if not self.stopping.is_set():
            log.info("received %s; draining for up to %.0f s", signal.Signals(signum).name, self.plan.proxy.shutdown_grace_s)
            self.stopping.set()

    async def watch_vllm(self) -> None:
        """When vLLM dies on its own, mark the upstream failed and stop."""
        assert self.proc is not None
        # Not proc.wait(): it also waits for the pipes, which vLLM's orphaned children keep open.
        while self.proc.returncode is None:
            await asyncio.sleep(WATCH_INTERVAL_S)
        code = self.proc.returncode
        if self.stopping.is_set():
            return
        self.exit_code = 128 - code if code < 0 else (code or 1)  # killed by signal N: 128 + N, as shells say
        when = "while serving" if self.state is not None and self.state.ready else "during start-up"
        if self.state is not None:
            self.state.mark_failed(f"vLLM exited with code {code}")
        sys.stderr.write(
            f"vllm_paddle_ocr serve: error: vLLM exited with code {code} {when}. Its last lines:\n{self.last_lines()}\n"
        )
        self.stopping.set()

    def stop_vllm(self) -> None:
        """End vLLM's whole process tree."""
        pid = self.proc.pid if self.proc is not None else None
        killed = kill_tree(pid)
        if killed:
            log.info("stopped vLLM process tree %s", killed)


def _load_detector(plan: LaunchPlan) -> Any:
    """The layout detector for /layout-parsing (the planned engine and device), or None when the repo has no layout model."""
    from ..proxy.layout.loading import load_detector

    return load_detector(plan.proxy)


async def run(plan: LaunchPlan, *, on_ready: Callable[[], None] | None = None) -> int:
    """Bind, start vLLM and the proxy, wait for readiness, then live until a signal or a death.

    A start-up failure ends vLLM, then reaches the caller as the VllmPaddleOcrError it was.
    """
    from ..proxy.state import UpstreamState

    _libc_prctl(_PR_SET_CHILD_SUBREAPER, 1)
    sock = bind_socket(plan.proxy.host, plan.proxy.port)
    for note in [*plan.notes, *(plan.vram.notes if plan.vram is not None else [])]:
        log.info("plan: %s", note)
    sup = Supervisor(plan)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sup.request_stop, signum)
    sup.state = UpstreamState()
    server = build_server(plan, sup.state)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        # vLLM first: its start-up hook (preexec_fn) is only safe while this process has no other threads.
        await sup.start_vllm()
        sup.spawn(sup.watch_vllm())
        startup = sup.spawn(sup.start_up())
        stop = sup.spawn(sup.stopping.wait())
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():
            startup.cancel()
        else:
            sup.state.attach_detector(startup.result())  # raises the start-up's error
            sup.state.mark_ready()
            log.info("ready: proxy on http://%s:%s, vLLM on %s", plan.proxy.host, plan.proxy.port, plan.proxy.upstream_url)
            if on_ready is not None:
                on_ready()
            await sup.stopping.wait()
    finally:
        sup.stopping.set()
        await _shutdown(sup, server, serving)
    return sup.exit_code


def build_server(plan: LaunchPlan, state: Any) -> Any:
    """A uvicorn server for the proxy app that leaves signal handling to the supervisor."""
    import uvicorn

    from ..proxy.app import create_app

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # the supervisor owns SIGTERM/SIGINT
            yield

    app = create_app(plan.proxy, state=state)
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=plan.proxy.shutdown_grace_s,
        lifespan="on",
    )
    return _Server(config)


async def _shutdown(sup: Supervisor, server: Any, serving: asyncio.Task) -> None:
    """Drain the proxy (graceful when asked to stop, quick when vLLM died), then end vLLM."""
    if sup.state is not None:
        sup.state.mark_draining()
    grace = sup.plan.proxy.shutdown_grace_s if sup.exit_code == 0 else 1.0
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(serving), timeout=grace + 1.0)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the server is going away regardless
        server.force_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(serving, timeout=2.0)
    await asyncio.to_thread(sup.stop_vllm)
    close = getattr(sup.state.detector if sup.state is not None else None, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            await asyncio.to_thread(close)


def serve(pm: pluggy.PluginManager, request: ServeRequest) -> int:
    """Plan (holding the per-GPU start lock from budget to readiness), then supervise."""
    plan = plan_launch(pm, request)
    if not plan.gpu_uuids:
        return asyncio.run(run(plan))
    with contextlib.ExitStack() as start_lock:
        start_lock.enter_context(gpu_start_lock(plan.gpu_uuids, timeout_s=request.gpu_lock_timeout_s))
        # Another instance may have started while we waited: budget again from a fresh NVML read.
        plan = plan_launch(pm, request)
        return asyncio.run(run(plan, on_ready=start_lock.close))
