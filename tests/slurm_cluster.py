"""A real two-node SLURM cluster on this one machine, for tests.

munged, one slurmctld and one ``slurmd -N <node>`` per node run from a temporary directory (config, keys,
state, spool, logs); clients reach it through ``SLURM_CONF``. Every process the cluster starts — the
daemons, the slurmstepd's they fork and the jobs' tasks — carries a marker variable in its environment, so
teardown can find and kill all of them even when a test fails half-way through a job. The layout follows
the facts in docs/PLATFORM_NOTES.md, SLURM (NodeAddr=127.0.0.1 with distinct ports, SlurmUser=root,
proctrack/linuxproc, task/none, select/cons_tres).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
MARKER = "W3_TEST_SLURM_CLUSTER"
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE"}


def missing_requirements() -> str | None:
    """Why a local cluster cannot run here (as a skip reason), or None when it can."""
    absent = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"SLURM/munge binaries not found: {', '.join(absent)} (bash launch/install.sh --test installs them)"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd launches job steps as their user, which only root can do)"
    return None


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def parse_scontrol_record(text: str) -> dict[str, str]:
    """`scontrol show -o` prints one record as space-separated Key=Value pairs (values may contain '=')."""
    fields: dict[str, str] = {}
    for match in re.finditer(r"(\w+(?:/\w+)?)=(\S*)", text):
        fields.setdefault(match.group(1), match.group(2))
    return fields


class LocalSlurmCluster:
    """Context manager: ``with LocalSlurmCluster(tmp_path) as cluster: job = cluster.sbatch(...)``."""

    def __init__(self, root: Path, nodes: tuple[str, ...] = ("n1", "n2"), cred_expire_s: int = 5,
                 start_timeout_s: float = 60.0):
        self.root = Path(root)
        self.nodes = nodes
        self.cred_expire_s = cred_expire_s
        self.start_timeout_s = start_timeout_s
        self.conf = self.root / "etc" / "slurm.conf"
        self.log_dir = self.root / "log"
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env.update(SLURM_CONF=str(self.conf), **{MARKER: str(self.root)})

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "LocalSlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for sub in ("etc", "munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / sub, 0o700)
        socket_path = self._start_munge()
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        self.conf.write_text(self._slurm_conf(socket_path, ctld_port, node_ports))
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i"])
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", [_binary("slurmd"), "-D", "-N", node])
        self.wait_nodes_idle(self.start_timeout_s)

    def _start_munge(self) -> Path:
        munge_dir = self.root / "munge"
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        socket_path = munge_dir / "munge.socket.2"
        self._spawn("munged", [_binary("munged"), "-F", "--force", f"--key-file={key}", f"--socket={socket_path}",
                               f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}",
                               f"--log-file={self.log_dir / 'munged.log'}"])
        self._wait(socket_path.exists, 15, "munged to create its socket")
        return socket_path

    def _slurm_conf(self, munge_socket: Path, ctld_port: int, node_ports: list[int]) -> str:
        r = self.root
        cpus = os.cpu_count() or 1
        lines = [
            "ClusterName=w3test",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={munge_socket},cred_expire={self.cred_expire_s}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd.%n.pid",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd.%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=30",         # the default: time for a batch script to finish after SIGTERM
            "MinJobAge=600",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
        ]
        lines += [f"NodeName={n} NodeAddr=127.0.0.1 Port={p} CPUs={cpus} State=UNKNOWN"
                  for n, p in zip(self.nodes, node_ports)]
        lines.append(f"PartitionName=local Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.log_dir / f"{name}.stdout", "wb")
        proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self._procs.append((name, proc))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode} while waiting for {what}:\n"
                                       + self.daemon_logs())
            if ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}:\n" + self.daemon_logs())

    def wait_nodes_idle(self, timeout: float) -> None:
        """Until every node is idle: no job, and none still completing on it."""
        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=10).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n) == "idle" for n in self.nodes)
        self._wait(idle, timeout, f"nodes {', '.join(self.nodes)} to become idle")

    def stop(self) -> None:
        """Cancel every job, kill what is left of them, stop the daemons, then kill anything else that
        carries this cluster's marker. No grace period: the tests have taken what they need by then."""
        if any(proc.poll() is None for name, proc in self._procs if name == "slurmctld"):
            try:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
                if jobs:
                    self.run("scancel", *jobs, check=False, timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                pass
        daemons = {proc.pid for _, proc in self._procs}
        self._kill_marked(spare=daemons)        # batch scripts, sruns, slurmstepds and their tasks
        for _, proc in reversed(self._procs):  # slurmd's first, munged last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=3)     # slurmctld may sit out its own shutdown timeouts: no need
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._kill_marked()

    def _kill_marked(self, spare: set[int] = frozenset()) -> None:
        token = f"{MARKER}={self.root}".encode()
        for _ in range(3):
            found = [pid for pid in self._marked_pids(token) if pid not in spare]
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    @staticmethod
    def _marked_pids(token: bytes) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if token in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def running_daemons(self) -> list[str]:
        return [name for name, proc in self._procs if proc.poll() is None]

    def leftover_pids(self) -> list[int]:
        """Processes still carrying this cluster's marker (empty after stop())."""
        return self._marked_pids(f"{MARKER}={self.root}".encode())

    # -- clients ---------------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 30, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, script: Path | str, *options: str, args: tuple[str, ...] = (), env: dict | None = None,
               cwd: Path | None = None) -> int:
        """Submit `script` with sbatch `options` and script `args`; returns the job id."""
        out = self.run("sbatch", "--parsable", *options, str(script), *args, env=env, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The job's fields from `scontrol show job` (JobState, Restarts, NodeList, ExitCode, ...)."""
        return parse_scontrol_record(self.run("scontrol", "show", "job", "-o", str(job_id)).stdout)

    def wait_job(self, job_id: int, until, timeout: float, what: str,
                 job_log: Path | None = None) -> dict[str, str]:
        """Poll the job until `until(fields)` is true; a timeout names what was awaited and shows the logs
        (the daemons', and the end of `job_log`)."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            fields = self.job(job_id)
            if until(fields):
                return fields
            time.sleep(0.5)
        job_tail = ""
        if job_log is not None and job_log.exists():
            job_tail = f"--- {job_log.name} ---\n" + "\n".join(job_log.read_text().splitlines()[-60:]) + "\n"
        raise TimeoutError(f"job {job_id}: timed out after {timeout:.0f}s waiting for {what}; last state "
                           f"{fields.get('JobState')} (reason {fields.get('Reason')})\n" + job_tail
                           + self.daemon_logs())

    def wait_finished(self, job_id: int, timeout: float, job_log: Path | None = None) -> dict[str, str]:
        return self.wait_job(job_id, lambda f: f.get("JobState") in FINISHED_STATES, timeout, "it to finish",
                             job_log)

    def daemon_logs(self, tail_lines: int = 25) -> str:
        parts = []
        for log in sorted(self.log_dir.glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-tail_lines:]
            parts.append(f"--- {log.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)
