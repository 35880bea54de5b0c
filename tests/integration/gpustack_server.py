"""A real GPUStack 2.x server on loopback for the integration tests: PostgreSQL, a venv, the process, its API, and workers reporting GPUs to it."""

from __future__ import annotations

import contextlib
import glob
import http.server
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, Iterator

GPUSTACK_VERSION = "2.3.0"
VENV_ENV_VAR = "GPUSTACK_VENV"
# The venvs `.ci/setup` prepares beside the project, used when the variables are unset.
SETUP_VENVS = {
    "GPUSTACK_VENV": Path(__file__).resolve().parents[2] / ".venv-gpustack",
    "GPUSTACK07_VENV": Path(__file__).resolve().parents[2] / ".venv-gpustack07",
}
PG_BIN_ENV_VAR = "PG_BIN"
START_TIMEOUT_S = float(os.environ.get("GPUSTACK_START_TIMEOUT", "420"))
ADMIN_PASSWORD = "Vpo-test-1"
# A reporting worker's heartbeat period: well inside the server's 150 s grace (GPUSTACK_WORKER_HEARTBEAT_GRACE_PERIOD).
HEARTBEAT_INTERVAL_S = 15


class HarnessError(RuntimeError):
    """Something the harness needs is missing or did not start; the message says what to install or read."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- PostgreSQL -------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The directory with initdb and pg_ctl: $PG_BIN, then PATH, then Debian's /usr/lib/postgresql/<v>/bin."""
    given = os.environ.get(PG_BIN_ENV_VAR)
    if given and (Path(given) / "initdb").exists():
        return Path(given)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise HarnessError("PostgreSQL is not installed: `apt-get install -y postgresql` (or set PG_BIN to its bin dir)")


class Postgres:
    """A throw-away PostgreSQL cluster in a temp dir, listening on a loopback port only."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        # Its own top-level temp dir: under root the cluster runs as `postgres`, who must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="vpo-postgres-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the cluster as Debian's `postgres` user.
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise HarnessError("running as root needs the `postgres` user that Debian's postgresql package creates") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as_user,
        )
        if result.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}\n{_tail(self.log)}")

    def start(self) -> None:
        """initdb, start on the loopback port, create the database."""
        self._run("initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data), "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "gpustack")

    def stop(self) -> None:
        """Stop the cluster if it runs and remove its files; never raises."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/gpustack"


# --- GPUStack's own venv ----------------------------------------------------------------------


def gpustack_venv(scratch: Path, version: str = GPUSTACK_VERSION, env_var: str = VENV_ENV_VAR) -> Path:
    """A venv with gpustack==version: $<env_var> when it has one (installed there when empty), else a new one in scratch."""
    given = os.environ.get(env_var)
    prepared = SETUP_VENVS.get(env_var)
    if not given and prepared is not None and (prepared / "bin" / "gpustack").exists():
        given = str(prepared)
    venv = Path(given) if given else scratch / f"gpustack-{version}-venv"
    executable = venv / "bin" / "gpustack"
    if executable.exists():
        return venv
    base_python = shutil.which("python3") or sys.executable
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"gpustack=={version}"],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if install.returncode != 0 or not executable.exists():
        raise HarnessError(f"pip install gpustack=={version} into {venv} failed:\n{install.stderr[-4000:]}")
    return venv


# --- The server -------------------------------------------------------------------------------


class ApiError(RuntimeError):
    """GPUStack answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


class GPUStackServer:
    """One `gpustack start` process (server only, no worker) and a logged-in API client."""

    def __init__(self, venv: Path, root: Path, database_url: str, catalog_file: Path | None) -> None:
        self.venv = venv
        self.root = root
        self.data_dir = root / "data"
        self.log = root / "gpustack.log"
        self.port = free_port()
        self.api_port = free_port()
        self.database_url = database_url
        self.catalog_file = catalog_file
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        """Start the server and wait until /healthz answers, then log in as admin."""
        argv = [
            str(self.venv / "bin" / "gpustack"),
            "start",
            "--data-dir", str(self.data_dir),
            "--port", str(self.port),
            "--api-port", str(self.api_port),
            "--gateway-mode", "disabled",
            "--disable-builtin-observability",
            "--disable-update-check",
            "--bootstrap-password", ADMIN_PASSWORD,
            "--database-url", self.database_url,
        ]  # fmt: skip
        if self.catalog_file is not None:
            argv += ["--model-catalog-file", str(self.catalog_file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSTACK_", "VIRTUAL_ENV"))}
        env["HF_HUB_OFFLINE"] = "1"
        # transformers caches remote code per directory name; keep this server's cache to itself.
        env["HF_MODULES_CACHE"] = str(self.root / "hf_modules")
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        started = time.monotonic()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root, start_new_session=True
            )
        deadline = started + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HarnessError(f"gpustack exited with {self.process.returncode} while starting:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        else:
            raise HarnessError(f"gpustack did not answer /healthz within {START_TIMEOUT_S:.0f} s:\n{_tail(self.log)}")
        self.startup_s = time.monotonic() - started
        self._login()

    def _login(self) -> None:
        body = urllib.parse.urlencode({"username": "admin", "password": ADMIN_PASSWORD}).encode()
        request = urllib.request.Request(f"{self.base_url}/auth/login", data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with self._opener.open(request, timeout=30):
            pass

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 120, token: str | None = None) -> Any:
        """Call the API as admin, or with a bearer token (a worker's); JSON in, JSON out; an error status raises ApiError."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        opener = self._opener if token is None else urllib.request.build_opener()
        try:
            with opener.open(request, timeout=timeout) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(text) if text else None

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after a grace period; never raises."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def log_tail(self) -> str:
        return _tail(self.log)


# --- A worker, as the server knows one -------------------------------------------------------------


class _Healthz(http.server.BaseHTTPRequestHandler):
    """The worker endpoint the server probes for reachability; nothing else is served."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class ReportedGpu:
    """One GPU as a worker's status reports it (GPUStack's GPUDeviceStatus)."""

    name: str
    total_bytes: int
    vendor: str = "nvidia"
    type: str = "cuda"  # the framework a custom backend's version must name

    def status(self, index: int) -> dict[str, Any]:
        return {
            "vendor": self.vendor, "type": self.type, "index": index, "device_index": index, "name": self.name,
            "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_OID, f'{self.name}-{index}')}", "driver_version": "550.54.15",
            "runtime_version": "12.4", "compute_capability": "9.0", "core": {"total": 132, "utilization_rate": 0.0},
            "memory": {"total": self.total_bytes, "used": 0, "utilization_rate": 0.0, "is_unified_memory": False},
        }  # fmt: skip


class ReportingWorker:
    """A GPUStack worker as the server sees one, through the API a worker uses: registration, status, heartbeats.

    It registers with a cluster's registration token (POST /v2/workers), reports its GPUs with the worker
    token it gets back (POST /v2/worker-status) and keeps its heartbeat (POST /v2/worker-heartbeat), and
    answers the server's reachability probe on a loopback port. It starts no workload, so the instances
    the scheduler places on it stay SCHEDULED with their placement and VRAM claim, for a test to read.
    """

    def __init__(self, server: GPUStackServer, registration_token: str, name: str, gpus: list[ReportedGpu]) -> None:
        self.server = server
        self.registration_token = registration_token
        self.name = name
        self.gpus = gpus
        self.id: int | None = None
        self._token: str | None = None
        self._status: dict[str, Any] = {}
        self._healthz = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _report(self) -> None:
        self.server.request("POST", "/v2/worker-status", self._status, token=self._token)
        self.server.request("POST", "/v2/worker-heartbeat", token=self._token)

    def _keep_reporting(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            with contextlib.suppress(ApiError, OSError):
                self._report()

    def start(self, timeout_s: float = 120) -> None:
        """Register, report, and wait until the server counts the worker READY."""
        self._threads = [
            threading.Thread(target=self._healthz.serve_forever, daemon=True),
            threading.Thread(target=self._keep_reporting, daemon=True),
        ]
        self._threads[0].start()
        gib = 1024**3
        status = {
            "cpu": {"total": 32, "utilization_rate": 1.0},
            "memory": {"total": 512 * gib, "used": 8 * gib, "utilization_rate": 1.5, "is_unified_memory": False},
            "swap": {"total": 0},
            "filesystem": [],
            "os": {"name": "Linux", "version": "12"},
            "kernel": {"name": "Linux", "release": "6.1.0", "version": "6.1.0", "architecture": "x86_64"},
            "uptime": {"uptime": 3600.0, "boot_time": "2026-01-01 00:00:00"},
        }
        identity = {
            "hostname": self.name, "ip": "127.0.0.1", "ifname": "lo", "port": self._healthz.server_address[1],
            "system_reserved": {"ram": 0, "vram": 0}, "state_message": None,  # GPUStack's defaults
        }  # fmt: skip
        # As a worker does: register with its system status first, then report its GPUs.
        registered = self.server.request(
            "POST", "/v2/workers", {**identity, "name": self.name, "labels": {}, "worker_uuid": "", "status": status},
            token=self.registration_token,
        )
        self.id, self._token = registered["id"], registered["token"]
        gpus = [gpu.status(index) for index, gpu in enumerate(self.gpus)]
        self._status = {**identity, "worker_uuid": registered["worker_uuid"], "status": {**status, "gpu_devices": gpus}}
        self._report()
        self._threads[1].start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker = self.server.request("GET", f"/v2/workers/{self.id}")
            if worker["state"] == "ready":
                return
            time.sleep(1)
        raise HarnessError(f"worker {self.name} is {worker['state']}, not ready, after {timeout_s:.0f} s: {worker.get('state_message')}")

    def stop(self) -> None:
        """Stop reporting and remove the worker from the server; never raises."""
        self._stop.set()
        self._healthz.shutdown()
        self._healthz.server_close()
        if self.id is not None:
            with contextlib.suppress(ApiError, OSError):
                self.server.request("DELETE", f"/v2/workers/{self.id}")


@contextlib.contextmanager
def reporting_worker(server: GPUStackServer, registration_token: str, name: str, gpus: list[ReportedGpu]) -> Iterator[ReportingWorker]:
    """A READY worker reporting these GPUs for the duration of the block; removed on the way out."""
    worker = ReportingWorker(server, registration_token, name, gpus)
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()


@contextlib.contextmanager
def running_gpustack(catalog_file: Path | None) -> Iterator[GPUStackServer]:
    """PostgreSQL + GPUStack for the duration of the block; both are stopped on the way out, whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="vpo-gpustack-"))
    postgres: Postgres | None = None
    server: GPUStackServer | None = None
    try:
        venv = gpustack_venv(root)
        postgres = Postgres(postgres_bin_dir())
        postgres.start()
        server = GPUStackServer(venv, root / "server", postgres.url, catalog_file)
        server.root.mkdir()
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
