"""Optional sandbox for training runs (`[sandbox]` of loopdeck.toml): no network, and per-process resource limits.

How: when `[sandbox]` asks for anything, the training command is prefixed with this file run as a launcher
(`python -I -S engine/run/sandbox.py FLAGS -- COMMAND…`). The launcher, single-threaded and stdlib-only, moves itself
into a new user namespace (and network namespace), sets its rlimits, then `exec`s the command: same pid, same
process group, so the runner supervises, times out and cleans up exactly as without it. (A `preexec_fn` would do
this work between fork and exec of the engine, which has threads: unsafe.) It costs 40-90 ms per run (a bare
interpreter, and the kernel setting up a network namespace). Every process the loop starts for an experiment runs
in it: training, and the trusted evaluation, which also executes the model code the agent wrote.

What it guarantees, on Linux (a session refuses to start, with a message saying why, where it cannot):
- `network = false`: the run and every process it starts live in a fresh network namespace whose only interface,
  loopback, is down. No connection to the internet, the LAN, or the host's own 127.0.0.1 services (the console,
  a database, a local model server); no DNS; no abstract Unix sockets of the host. The namespace belongs to a new
  user namespace, so the code cannot `setns` back into the host's network even when loopdeck runs as root.
- `memory_mb`: RLIMIT_DATA per process (heap and private writable mappings): an allocation past it fails
  (`MemoryError`, torch's "can't allocate memory"), which is recorded as a crash with that reason. RLIMIT_DATA,
  not RLIMIT_AS: torch reserves far more address space than it uses (600 MB of RLIMIT_AS cannot even import
  it), and CUDA more still. Not yet checked on a GPU machine.
- `cpu_seconds`: RLIMIT_CPU per process: SIGXCPU at the limit (recorded as a crash "killed by SIGXCPU"), SIGKILL
  two seconds later if it is ignored.
- `max_processes`: RLIMIT_NPROC, processes *and threads* (leave room for the framework's thread pools). The run
  gets a user namespace of its own for it, so only the run's own processes count, not the user's others. The
  kernel exempts root from it (loopdeck says so at start).

What it does not do:
- No filesystem isolation: the run reads and writes whatever the user can (home directory, ~/.ssh, ~/.aws, other
  repositories). Unix sockets reachable by path (ssh-agent, docker.sock, X11) still work.
- Same user: no privilege drop. GPUs and other devices stay visible. Limits are per process, not per run: a run
  that starts N processes may use N times memory_mb. GPU memory is not limited.
- It is containment for mistakes and careless code, not a security boundary against code written to escape
  (kernel exploits, the filesystem above). The credential scrub of the environment is separate (runner.py).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopdeck.engine.config import SandboxSettings

LAUNCHER = Path(__file__).resolve()
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
EXIT_SANDBOX_FAILED = 126  # the shell's "cannot execute" status: the command itself never ran
EXIT_NOT_FOUND = 127
_CPU_GRACE_SECONDS = 2  # between SIGXCPU (the soft limit) and SIGKILL (the hard one)


def is_active(settings: SandboxSettings) -> bool:
    """True when `[sandbox]` asks for anything at all (otherwise runs start exactly as without a sandbox)."""
    return (not settings.network or settings.memory_mb > 0 or settings.cpu_seconds > 0
            or settings.max_processes > 0)


def _flags(settings: SandboxSettings) -> list[str]:
    flags = [] if settings.network else ["--no-network"]
    for name, value in (("--memory-mb", settings.memory_mb), ("--cpu-seconds", settings.cpu_seconds),
                        ("--max-processes", settings.max_processes)):
        if value > 0:
            flags += [name, str(value)]
    return flags


def sandboxed_argv(argv: Sequence[str], settings: SandboxSettings) -> list[str]:
    """The training command, wrapped in the launcher when the sandbox is on (unchanged when it is off)."""
    if not is_active(settings):
        return list(argv)
    # -I -S: the launcher needs the standard library only; no site-packages, no PYTHON* variables, no cwd.
    return [sys.executable, "-I", "-S", str(LAUNCHER), *_flags(settings), "--", *argv]


def check_sandbox(settings: SandboxSettings) -> list[str]:
    """Refuse (LoopdeckError) a sandbox this machine cannot provide; return notes on what it will not enforce.

    The network namespace is probed once per engine process, in a throwaway launcher."""
    from loopdeck.engine.errors import LoopdeckError

    if not is_active(settings):
        return []
    if not settings.network or settings.max_processes > 0:
        problem = _probe_namespaces(network=not settings.network)
        if problem:
            needs, instead = (("network = false needs a new network namespace", "set network = true")
                              if not settings.network else
                              ("max_processes needs a user namespace of its own", "set max_processes = 0"))
            raise LoopdeckError(
                f"[sandbox] {needs}, which this system refuses ({problem}). Allow unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0, or the "
                "distribution's AppArmor setting kernel.apparmor_restrict_unprivileged_userns=0), or "
                f"{instead} in [sandbox] of loopdeck.toml")
    notes = []
    if settings.max_processes > 0 and os.geteuid() == 0:
        notes.append("[sandbox] max_processes is not enforced: loopdeck runs as root, which the kernel exempts "
                     "from the process limit")
    return notes


@functools.cache
def _probe_namespaces(network: bool) -> str:
    """"" if the launcher can enter a new user (+ network) namespace here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"namespaces are a Linux feature; this is {sys.platform}"
    flags = ["--no-network"] if network else ["--max-processes", "1000000"]
    try:
        probe = subprocess.run([sys.executable, "-I", "-S", str(LAUNCHER), *flags, "--probe"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the probe did not run: {exc}"
    if probe.returncode == 0:
        return ""
    return probe.stderr.strip().removeprefix("loopdeck sandbox: ") or f"probe exit status {probe.returncode}"


# --- the launcher (runs in the training process itself, before exec) -----------------------------------------------


class SandboxFailure(Exception):
    pass


_UNSHARE_HINTS = {
    errno.ENOSPC: " — user namespaces are limited to none here (user.max_user_namespaces)",
    errno.EPERM: " — unprivileged user namespaces are disabled here (a sysctl or a security policy)",
    errno.EINVAL: " — this kernel does not support user or network namespaces",
}


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_namespaces(network: bool) -> None:
    """Move this process into a new user namespace (and a new network namespace when `network`), keeping its own
    uid and gid inside it."""
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)  # the C library this interpreter is linked with
    if libc.unshare(CLONE_NEWUSER | (CLONE_NEWNET if network else 0)) != 0:
        code = ctypes.get_errno()
        raise SandboxFailure(f"unshare(CLONE_NEWUSER{' | CLONE_NEWNET' if network else ''}): {os.strerror(code)}"
                             + _UNSHARE_HINTS.get(code, ""))
    try:
        # A process may map its own ids into the namespace it just made; setgroups must be denied first.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        raise SandboxFailure(f"cannot map the user into the new namespace: {exc.strerror or exc}") from None


def apply_limits(memory_mb: int = 0, cpu_seconds: int = 0, max_processes: int = 0) -> None:
    """Set this process's rlimits (inherited by everything it starts); 0 leaves a limit as it is, and a limit the
    user's own hard limit is already below stays at that (only a privileged process may raise one)."""
    for kind, soft, hard in ((resource.RLIMIT_DATA, memory_mb * 2**20, memory_mb * 2**20),
                             (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + _CPU_GRACE_SECONDS),
                             (resource.RLIMIT_NPROC, max_processes, max_processes)):
        if soft <= 0:
            continue
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError) as exc:
            raise SandboxFailure(f"cannot set a resource limit: {exc}") from None


@dataclass(frozen=True)
class Limits:
    """What the launcher applies before it runs the command (its command-line flags)."""

    no_network: bool = False
    memory_mb: int = 0
    cpu_seconds: int = 0
    max_processes: int = 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopdeck sandbox", description="Run a command with no network "
                                     "and/or resource limits (loopdeck's training launcher).")
    parser.add_argument("--no-network", action="store_true")
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    parser.add_argument("--max-processes", type=int, default=0)
    parser.add_argument("--probe", action="store_true", help="apply, then exit 0 without running anything")
    parser.add_argument("command", nargs="*")
    return parser


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(args.no_network, args.memory_mb, args.cpu_seconds, args.max_processes)


def unwrap(argv: Sequence[str]) -> tuple[list[str], Limits]:
    """(the command, its limits) of a command `sandboxed_argv` wrapped; (argv, no limits) for any other. The warm
    runner (engine/run/warm.py) applies the same limits in its forked process instead of exec-ing the launcher."""
    head = [sys.executable, "-I", "-S", str(LAUNCHER)]
    if list(argv[:4]) != head or "--" not in argv:
        return list(argv), Limits()
    args = _parser().parse_args(list(argv[4:]))
    return list(args.command), _limits(args)


def enter(limits: Limits) -> None:
    """Apply `limits` to this process (and so to everything it starts); SandboxFailure when it cannot."""
    if limits.no_network or limits.max_processes > 0:
        # A user namespace of the run's own: the network's owner, and the scope of the process count.
        enter_namespaces(network=limits.no_network)
    apply_limits(limits.memory_mb, limits.cpu_seconds, limits.max_processes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        enter(_limits(args))
    except SandboxFailure as exc:
        print(f"loopdeck sandbox: {exc}", file=sys.stderr, flush=True)
        return EXIT_SANDBOX_FAILED
    if args.probe:
        return 0
    if not args.command:
        parser.error("no command to run")
    try:
        os.execvp(args.command[0], args.command)
    except OSError as exc:
        print(f"loopdeck sandbox: cannot start {args.command[0]!r}: {exc.strerror or exc}", file=sys.stderr,
              flush=True)
    return EXIT_NOT_FOUND


if __name__ == "__main__":
    sys.exit(main())
