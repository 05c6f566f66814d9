"""One training run per workdir: a lock file naming its holder.

`workdir/lock` is held with `fcntl.flock` for the whole run and holds the
holder's pid, host, start time and command line. The kernel releases the
lock when its process ends, however it ends (SIGKILL included), so a lock
is never left behind: a file that still names a process while nobody holds
the lock is stale (that run died), and is reported and taken over. A second
run on a busy workdir raises `Busy` naming the holder, or waits for it if
asked (`wait_seconds`). flock works across processes of one host and, on
Linux, across hosts over NFS (emulated with byte-range locks); on a file
system without it (some FUSE mounts) the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time


class Busy(RuntimeError):
  """Another run holds the workdir."""


def _read(fd) -> dict | None:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode(errors='replace').strip()
  if not text:
    return None
  try:
    return json.loads(text)
  except ValueError:
    return {'unreadable': text[:200]}


def describe(holder: dict | None) -> str:
  if not holder:
    return 'an unknown process'
  if 'unreadable' in holder:
    return f'an unknown process (lock file holds {holder["unreadable"]!r})'
  return (f'pid {holder.get("pid")} on host {holder.get("host")} (started '
          f'{holder.get("started")}: {holder.get("command")})')


def _try_lock(fd, path) -> bool:
  """Takes the lock if free: True; False if another process holds it."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as error:
    if error.errno in (errno.EAGAIN, errno.EACCES):
      return False
    # Some FUSE mounts have no flock: run, but say that nothing guards it.
    print(f'warning: cannot lock {path} ({error.strerror}): nothing stops a '
          'second run from using this workdir at the same time', flush=True)
    return True


@contextlib.contextmanager
def hold(workdir: str, *, wait_seconds: float = 0.0):
  """Holds `workdir/lock` while active.

  Args:
    workdir: the run's directory (must exist).
    wait_seconds: how long to wait for another holder to finish (0: refuse
      at once; inf: wait as long as it takes).

  Yields:
    The stale holder found in the lock file (a dict), or None.

  Raises:
    Busy: another live process holds it (past `wait_seconds`).
  """
  path = os.path.join(workdir, 'lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    deadline = time.monotonic() + wait_seconds
    waited = False
    while not _try_lock(fd, path):
      holder = _read(fd)
      if time.monotonic() >= deadline:
        raise Busy(
            f'workdir {workdir} is in use by another training run: '
            f'{describe(holder)}. Wait for it to finish, choose another '
            '--workdir, or pass --wait_for_lock=SECONDS to wait.')
      if not waited:
        print(f'waiting for {describe(holder)} to release {path}',
              flush=True)
        waited = True
      time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))
    stale = _read(fd)
    mine = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now().isoformat(timespec='seconds'),
            'command': ' '.join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(mine).encode() + b'\n')
    os.fsync(fd)
    try:
      yield stale
    finally:
      os.ftruncate(fd, 0)  # released cleanly: nothing stale is left
  finally:
    os.close(fd)  # releases the lock
