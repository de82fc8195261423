"""fake-zfs (interop/fake-zfs runs this): a stand-in for OpenZFS 2.3's `zfs` command, for keel's
tests on hosts without ZFS.

It implements the subcommands keel uses, with real OpenZFS 2.3.2's output format, error
messages and exit codes (each checked in the OpenZFS source at tag zfs-2.3.2; the functions are
named where they are modelled), backs every volume with a sparse file attached to a loop
device (real block devices, so keel's block-device path runs), serializes every call behind one
global lock held for a configurable time (a slow storage server), and injects failures.

    zfs list -H [-p] [-o COLS] [-t TYPES] [-r | -d N] [NAME...]
    zfs get [-H] [-p] [-o name,property,value,source] [-r | -d N] [-t TYPES] [-s SRC] PROPS [NAME...]
    zfs create [-p] [-s] -V SIZE [-b BLOCKSIZE] [-o prop=val]... NAME     (volume)
    zfs create [-p] [-o prop=val]... NAME                                 (filesystem, never mounted)
    zfs clone [-p] [-o prop=val]... SNAPSHOT NAME
    zfs snapshot [-r] [-o prop=val]... NAME@SNAP...
    zfs destroy [-f] [-r | -R] NAME
    zfs destroy [-r | -R] NAME@SNAP[%SNAP][,...]  (all or nothing; missing names skipped)
    zfs set prop=val... NAME...                   (volsize resizes the file, then losetup -c)
    zfs program [-jn] [-t N] [-m N] POOL SCRIPT ARGS...
    zfs version
  fake-only helpers (no lock hold, no failure injection, not in calls.log):
    fake-zfs create-pool NAME      a pool: its root filesystem NAME (pools are never implicit)
    fake-zfs orphans               leftovers, one per line: KIND TAB NAME TAB DETAIL
    fake-zfs cleanup               detach every loop device of the state, remove the links, the
                                   udev sleepers and the state directory (test teardown)
    fake-zfs destroy-batch-script  print the channel program `program` runs (destroy-batch.lua)

Environment:
    KEEL_FAKE_ZFS_STATE        (required) the state directory
    KEEL_FAKE_ZFS_DEV_ROOT     where device links appear (default $STATE/dev/zvol), as
                               DEV_ROOT/POOL/NAME -> /dev/loopN; blanks in names become '+',
                               as udev's zvol_id does (udev/zvol_id.c)
    KEEL_FAKE_ZFS_UDEV_DELAY   seconds until a new volume's link appears (default 0.05); a
                               detached sleeper makes it, like udev after `zfs create` returns
    KEEL_FAKE_ZFS_HOLD         seconds every call holds the lock before its work (default 0)
    KEEL_FAKE_ZFS_BUSY_RATE    probability that a mutating call fails with "dataset is busy",
                               changing nothing (default 0)
    KEEL_FAKE_ZFS_CRASH_RATE   probability that a call SIGKILLs itself, at random before its
                               work or after it was committed (default 0)
    KEEL_FAKE_ZFS_SEED         seed: call number N draws from random.Random("SEED:N")

State directory: state.json (the truth, replaced atomically: write, fsync, rename, fsync dir),
vols/ and snaps/ (one sparse file per volume and per volume snapshot; a snapshot and a clone are
copies, cp --reflink=auto --sparse=always), lock (the global flock), calls.log, calls.seq (the
call counter), udev/ (pid files of pending sleepers), pycache/ (this module's bytecode: the
launcher loads it after taking the lock). Work that a crash can interrupt (a file
made, a loop device attached, but state.json not yet replaced; or the reverse for a destroy) is
garbage-collected at the start of the next mutating call, so every call is atomic as a zfs
ioctl is.

calls.log, one line per zfs call, TAB-separated:
    START LOCKED RELEASED STATUS NOTE ARGV
START: when it asked for the lock, LOCKED: when it got it, RELEASED: when it let go (epoch
seconds); STATUS: exit status, or "killed"; NOTE: "-", "busy" (injected), "crash-before" or
"crash-after"; ARGV: the arguments after the program name, as a JSON array.

Not modelled (a clear "fake-zfs:" error, exit 2): other subcommands and options, properties
other than name, type, creation, used, available, referenced, volsize, volblocksize, origin,
refreservation, createtxg, guid, clones, mountpoint and user properties; channel programs other
than destroy-batch.lua. used/referenced/available are approximations (allocated bytes of the
backing file, free space of the state's file system). Snapshots are listed only when asked for
(-t), as with the default listsnapshots=off.
"""

import fcntl
import os
import sys
import time
import errno as errno_mod
import json
import random
import re
import signal
import subprocess

ZVOL_DEFAULT_BLOCKSIZE = 16384  # include/sys/fs/zfs.h
SPA_MINBLOCKSIZE = 512
SPA_MAXBLOCKSIZE = 16 << 20  # the pool's maxblocksize with large_blocks enabled
ZFS_MAX_DATASET_NAME_LEN = 256  # include/sys/fs/zfs.h
ZAP_MAXNAMELEN = 256
ZAP_MAXVALUELEN = 8192
MAX_DATASET_NESTING = 50  # zfs_max_dataset_nesting
ZCP_MAX_INSTRLIMIT = 100 * 1000 * 1000  # include/sys/fs/zfs.h
ZCP_MAX_MEMLIMIT = 100 * 1024 * 1024
EBUSY, EEXIST, ENOENT = errno_mod.EBUSY, errno_mod.EEXIST, errno_mod.ENOENT

FILESYSTEM, VOLUME, SNAPSHOT = 1, 2, 4  # zfs_type_t bits
DATASET = FILESYSTEM | VOLUME | SNAPSHOT
TYPE_NAMES = {FILESYSTEM: "filesystem", VOLUME: "volume", SNAPSHOT: "snapshot"}
TYPE_BITS = {"filesystem": FILESYSTEM, "volume": VOLUME, "snapshot": SNAPSHOT}
MUTATING = {"create", "clone", "snapshot", "destroy", "set", "program"}
FAKE_ONLY = {"create-pool", "orphans", "cleanup", "destroy-batch-script"}

HERE = os.path.dirname(os.path.realpath(__file__))
DESTROY_BATCH_SCRIPT = os.path.join(HERE, "destroy-batch.lua")
DESTROY_BATCH_MARKER = "-- keel:destroy-batch v1"

# cmd/zfs/zfs_main.c get_usage(): the usage lines `usage(B_FALSE)` prints.
USAGE = {
    "clone": "\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>\n",
    "create": "\tcreate [-Pnpuv] [-o property=value] ... <filesystem>\n"
    "\tcreate [-Pnpsv] [-b blocksize] [-o property=value] ... -V <size> <volume>\n",
    "destroy": "\tdestroy [-fnpRrv] <filesystem|volume>\n"
    "\tdestroy [-dnpRrv] <filesystem|volume>@<snap>[%<snap>][,...]\n"
    "\tdestroy <filesystem|volume>#<bookmark>\n",
    "get": "\tget [-rHp] [-j [--json-int]] [-d max] [-o \"all\" | field[,...]]\n"
    "\t    [-t type[,...]] [-s source[,...]]\n"
    "\t    <\"all\" | property[,...]> [filesystem|volume|snapshot|bookmark] ...\n",
    "list": "\tlist [-Hp] [-j [--json-int]] [-r|-d max] [-o property[,...]] [-s property]...\n"
    "\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...\n",
    "set": "\tset [-u] <property=value> ... <filesystem|volume|snapshot> ...\n",
    "snapshot": "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...\n",
    "program": "\tprogram [-jn] [-t <instruction limit>] [-m <memory limit (b)>]\n"
    "\t    <pool> <program file> [lua args...]\n",
    "version": "\tversion [-j]\n",
}


class Exit(Exception):
    """Ends the call with this status (what was written to out/err so far is printed)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Call:
    """One zfs call: its output buffers, its random draws and the state it works on."""

    def __init__(self, state_dir, rng, busy, subcommand):
        self.state_dir = state_dir
        self.rng = rng
        self.busy = busy  # injected "dataset is busy" for this call
        self.subcommand = subcommand
        self.out = []
        self.err = []
        self.state = load_state(state_dir)
        self.dirty = False
        self.after_commit = []  # (function, args): udev sleepers, file removal
        self.open_devices = None  # devices held open by others, read once when needed
        self.discards = []  # (name, loop device, backing file) of destroyed datasets

    def print(self, text):
        self.out.append(text)

    def eprint(self, text):
        self.err.append(text)

    def usage(self):
        """cmd/zfs/zfs_main.c usage(B_FALSE): the usage to stderr and exit(2)."""
        self.eprint("usage:\n" + USAGE.get(self.subcommand, ""))
        if self.subcommand in ("set", "get", "list"):
            self.eprint("\n(fake-zfs: the property table is not reproduced)\n")
        else:
            self.eprint(
                "\nFor the property list, run: zfs set|get\n"
                "\nFor the delegated permission list, run: zfs allow|unallow\n"
                "\nFor further help on a command or topic, run: zfs help [<topic>]\n"
            )
        raise Exit(2)

    def error(self, action, description):
        """libzfs zfs_verror(): "ACTION: DESCRIPTION" on stderr."""
        self.eprint(f"{action}: {description}\n")

    @property
    def datasets(self):
        return self.state["datasets"]

    def commit(self):
        if self.dirty:
            save_state(self.state_dir, self.state)
            self.dirty = False


def not_modelled(what):
    sys.stderr.write(f"fake-zfs: {what} is not modelled by fake-zfs\n")
    raise Exit(2)


# ---------------------------------------------------------------- state ----


def state_path(state_dir):
    return os.path.join(state_dir, "state.json")


def load_state(state_dir):
    try:
        with open(state_path(state_dir)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"version": 1, "next_txg": 1, "datasets": {}}


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(state_dir, state):
    """Atomically: a crash leaves the old state or the new, never a torn file."""
    tmp = state_path(state_dir) + f".tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path(state_dir))
    fsync_dir(state_dir)


def dev_root(state_dir):
    return os.environ.get("KEEL_FAKE_ZFS_DEV_ROOT") or os.path.join(state_dir, "dev", "zvol")


def dev_link(state_dir, name):
    # udev/zvol_id.c: blanks in a zvol's name become '+' in its /dev/zvol path.
    return os.path.join(dev_root(state_dir), re.sub(r"[ \t]", "+", name))


def new_guid(call):
    return call.rng.getrandbits(64) or 1


def next_txg(call):
    txg = call.state["next_txg"]
    call.state["next_txg"] = txg + 1
    return txg


# ----------------------------------------------------------- loop devices ----


def loop_devices():
    """{"/dev/loopN": backing file} for every attached loop device on the host."""
    found = {}
    try:
        entries = os.listdir("/sys/block")
    except OSError:
        return found
    for entry in entries:
        if not entry.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{entry}/loop/backing_file") as f:
                backing = f.read().rstrip("\n")
        except OSError:
            continue
        if backing.endswith(" (deleted)"):
            backing = backing[: -len(" (deleted)")]
        found["/dev/" + entry] = backing
    return found


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(f"fake-zfs: {' '.join(cmd)} failed: {result.stderr.strip()}\n")
        raise Exit(2)
    return result.stdout


def attach(path):
    return run(["losetup", "--find", "--show", path]).strip()


def open_devices():
    """The devices other processes hold open (their /proc/PID/fd links). An open zvol is long
    held, which makes dsl_destroy_head_check_impl() answer EBUSY (module/zfs/dsl_destroy.c)."""
    me = str(os.getpid())
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/"):
                found.add(target)
    return found


def copy_sparse(src, dst):
    run(["cp", "--reflink=auto", "--sparse=always", src, dst])


# ------------------------------------------------------------------- udev ----


def udev_add(state_dir, name, device, backing):
    """Makes DEV_ROOT/NAME -> device, after KEEL_FAKE_ZFS_UDEV_DELAY, from a detached
    sleeper (as udev does after `zfs create` returned), unless the volume is gone by then."""
    delay = env_float("KEEL_FAKE_ZFS_UDEV_DELAY", 0.05)
    link = dev_link(state_dir, name)
    if delay <= 0:
        make_link(link, device, backing)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return
    # The sleeper: its own session, no inherited pipes (the caller reads our stdout to EOF),
    # a pid file so that `fake-zfs cleanup` can stop it.
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 1 << 16)
        pid_file = os.path.join(state_dir, "udev", str(os.getpid()))
        with open(pid_file, "w") as f:
            f.write(link + "\n")
        time.sleep(delay)
        make_link(link, device, backing)
        os.unlink(pid_file)
    finally:
        os._exit(0)


def make_link(link, device, backing):
    if loop_devices().get(device) != backing:
        return  # destroyed meanwhile
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = os.path.join(os.path.dirname(link), f".udev-{os.getpid()}")  # a name may be long
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(device, tmp)
    os.replace(tmp, link)
    if loop_devices().get(device) != backing:  # destroyed while we linked: undo
        remove_link(link, device)


def remove_link(link, device=None):
    try:
        if device is None or os.readlink(link) == device:
            os.unlink(link)
    except OSError:
        pass


# ---------------------------------------------------------- consistency ----


def collect_garbage(state_dir, state):
    """Undoes what a call killed mid-way left behind: backing files no dataset refers to,
    loop devices of such files (or of volumes, but not the device the state records), and
    links that no volume explains. state.json is the truth."""
    referenced = {}
    for name, ds in state["datasets"].items():
        if ds.get("file"):
            referenced[os.path.join(state_dir, ds["file"])] = ds
    for device, backing in loop_devices().items():
        if not backing.startswith(state_dir + "/"):
            continue
        ds = referenced.get(backing)
        if ds is None or ds.get("loop") != device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
    for sub in ("vols", "snaps"):
        directory = os.path.join(state_dir, sub)
        for entry in os.listdir(directory):
            path = os.path.join(directory, entry)
            if path not in referenced:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    wanted = {dev_link(state_dir, n): ds.get("loop") for n, ds in state["datasets"].items()
              if ds["type"] == "volume"}
    for link, target in stray_links(state_dir, wanted):
        remove_link(link, target)


def stray_links(state_dir, wanted):
    root = dev_root(state_dir)
    ours = set(loop_devices_of(state_dir))
    for top, _dirs, files in os.walk(root):
        for entry in files + _dirs:
            path = os.path.join(top, entry)
            if not os.path.islink(path):
                continue
            target = os.readlink(path)
            if path in wanted and wanted[path] == target:
                continue
            # A link of ours points at a loop device; one whose device is now someone
            # else's (or detached) is ours too if it sits in our dev root.
            if target.startswith("/dev/loop") or target in ours:
                yield path, target


def loop_devices_of(state_dir):
    return [d for d, b in loop_devices().items() if b.startswith(state_dir + "/")]


# -------------------------------------------------------------- names ----


def entity_namecheck(path):
    """module/zcommon/zfs_namecheck.c entity_namecheck(): None or the reason."""
    if len(path.encode()) >= ZFS_MAX_DATASET_NAME_LEN:
        return "name is too long"
    if path.startswith("/"):
        return "leading slash in name"
    if path == "":
        return "empty component or misplaced '@' or '#' delimiter in name"
    valid = re.compile(r"[A-Za-z0-9\-_.: %]")
    start = 0
    found_delim = False
    while True:
        end = start
        while end < len(path) and path[end] not in "/@#":
            end += 1
        if end == len(path) and path[end - 1] == "/":
            return "trailing slash in name"
        for ch in path[start:end]:
            if not valid.fullmatch(ch):
                return f"invalid character '{ch}' in name"
        component = path[start:end]
        if end == len(path) or path[end] == "/":
            if component == ".":
                return "self reference, '.' is found in name"
            if component == "..":
                return "parent reference, '..' is found in name"
        if end < len(path) and path[end] in "@#":
            if found_delim:
                return "multiple '@' and/or '#' delimiters in name"
            found_delim = True
        if start == end:
            return "empty component or misplaced '@' or '#' delimiter in name"
        if end == len(path):
            return None
        if path[end] == "/" and found_delim:
            return "trailing slash in name"
        start = end + 1


def validate_name(path, types, modifying):
    """lib/libzfs/libzfs_dataset.c zfs_validate_name(): None or the reason."""
    if not types & SNAPSHOT and "@" in path:
        return "snapshot delimiter '@' is not expected here"
    if types == SNAPSHOT and "@" not in path:
        return "missing '@' delimiter in snapshot name"
    if "#" in path:
        return "bookmark delimiter '#' is not expected here"
    if modifying and "%" in path:
        return "invalid character % in name"
    return entity_namecheck(path)


def nesting_too_deep(path):
    return path.count("/") + (1 if "@" in path else 0) >= MAX_DATASET_NESTING


def pool_of(name):
    return re.split(r"[/@]", name, maxsplit=1)[0]


def parent_of(name):
    """libzfs parent_name(): the dataset above NAME (a snapshot's is its dataset)."""
    if "@" in name:
        return name.split("@", 1)[0]
    if "/" in name:
        return name.rsplit("/", 1)[0]
    return None


def type_bit(ds):
    return TYPE_BITS[ds["type"]]


def zfs_open(call, path, types):
    """lib/libzfs/libzfs_dataset.c zfs_open(): the dataset, or the error printed and None."""
    action = f"cannot open '{path}'"
    reason = validate_name(path, types, False)
    if reason:
        call.error(action, reason)
        return None
    ds = call.datasets.get(path)
    if ds is None:
        call.error(action, "dataset does not exist")  # zfs_standard_error(ENOENT)
        return None
    if not types & type_bit(ds):
        call.error(action, "operation not applicable to datasets of this type")
        return None
    return ds


def pool_exists(call, pool):
    ds = call.datasets.get(pool)
    return ds is not None and ds["type"] == "filesystem"


def zpool_open(call, pool):
    """lib/libzfs/libzfs_pool.c zpool_open()."""
    if not pool_exists(call, pool):
        call.error(f"cannot open '{pool}'", "no such pool")
        return False
    return True


def check_parents(call, path):
    """lib/libzfs/libzfs_dataset.c check_parents(): True, or the error printed."""
    action = f"cannot create '{path}'"
    parent = parent_of(path)
    if parent is None:
        call.error(action, "missing dataset name")
        return False
    pool = pool_of(path)
    if not pool_exists(call, pool):
        call.error(action, f"no such pool '{pool}'")
        return False
    ds = call.datasets.get(parent)
    if ds is None:
        call.error(action, "parent does not exist")
        return False
    if ds["type"] != "filesystem":
        call.error(action, "parent is not a filesystem")
        return False
    return True


def children(call, name):
    """Direct child datasets (filesystems and volumes) of NAME."""
    prefix = name + "/"
    return sorted(n for n in call.datasets if n.startswith(prefix) and "@" not in n
                  and "/" not in n[len(prefix):])


def snapshots_of(call, name):
    prefix = name + "@"
    snaps = [n for n in call.datasets if n.startswith(prefix)]
    return sorted(snaps, key=lambda n: call.datasets[n]["createtxg"])


def clones_of(call, snapshot):
    return sorted(n for n, ds in call.datasets.items() if ds.get("origin") == snapshot)


def descendants(call, name):
    """Everything under NAME (children, their children, all snapshots)."""
    return sorted(n for n in call.datasets
                  if n.startswith(name + "/") or n.startswith(name + "@"))


# ---------------------------------------------------------- numbers ----


def nicestrtonum(value):
    """lib/libzfs/libzfs_util.c zfs_nicestrtonum(): (number, None) or (None, reason)."""
    if not value or (not value[0].isdigit() and value[0] != "."):
        return None, f"bad numeric value '{value}'"
    m = re.match(r"[0-9]*", value)
    digits, rest = m.group(0), value[m.end():]
    fractional = rest.startswith(".")
    if fractional:
        m = re.match(r"[0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?", value)
        number, rest = float(m.group(0)), value[m.end():]
    else:
        number = int(digits) if digits else 0
        if number >= 1 << 64:
            return None, "numeric value is too large"
    shift = str2shift(rest)
    if shift is None:
        return None, f"invalid numeric suffix '{rest}'"
    if fractional:
        result = number * (2 ** shift)
        if result >= float(2 ** 64 - 1):
            return None, "numeric value is too large"
        return int(result), None
    if shift >= 64 or (number << shift) >= 1 << 64:
        return None, "numeric value is too large"
    return number << shift, None


def str2shift(suffix):
    if suffix == "":
        return 0
    ends = "BKMGTPEZ"
    index = ends.find(suffix[0].upper())
    if index < 0:
        return None
    rest = suffix[1:].upper()
    if rest == "" or (suffix[0].upper() != "B" and rest in ("B", "IB")):
        return 10 * index
    return None


def nicebytes(num):
    """lib/libzutil/zutil_nicenum.c zfs_nicenum_format(ZFS_NICENUM_BYTES)."""
    units = ["B", "K", "M", "G", "T", "P", "E"]
    n, index = num, 0
    while n >= 1024 and index < 6:
        n //= 1024
        index += 1
    if index == 0 or num % (1024 ** index) == 0:
        return f"{n}{units[index]}"
    for precision in (2, 1, 0):
        text = f"{num / (1024 ** index):.{precision}f}{units[index]}"
        if len(text) <= 5:
            return text
    return text


def volsize_to_reservation(volsize, volblocksize):
    """lib/libzfs/libzfs_dataset.c zvol_volsize_to_reservation() for a pool of plain vdevs
    and copies=1: the refreservation a thick volume gets."""
    nblocks = volsize // volblocksize
    size = nblocks * volblocksize
    numdb = 7
    while nblocks > 1:
        nblocks += 1024 - 1  # DNODES_PER_LEVEL
        nblocks //= 1024
        numdb += nblocks
    numdb *= 2  # MIN(SPA_DVAS_PER_BP, copies + 1)
    numdb *= 1 << 17  # DN_MAX_INDBLKSHIFT
    return size + numdb


# ------------------------------------------------------------ properties ----

# name: (types it applies to, column header, right-aligned)
NATIVE = {
    "name": (DATASET, "NAME", False),
    "type": (DATASET, "TYPE", False),
    "creation": (DATASET, "CREATION", False),
    "used": (DATASET, "USED", True),
    "available": (FILESYSTEM | VOLUME, "AVAIL", True),
    "referenced": (DATASET, "REFER", True),
    "volsize": (VOLUME | SNAPSHOT, "VOLSIZE", True),
    "volblocksize": (VOLUME, "VOLBLOCK", True),
    "origin": (FILESYSTEM | VOLUME, "ORIGIN", False),
    "refreservation": (FILESYSTEM | VOLUME, "REFRESERV", True),
    "createtxg": (DATASET, "CREATETXG", True),
    "guid": (DATASET, "GUID", True),
    "clones": (SNAPSHOT, "CLONES", False),
    "mountpoint": (FILESYSTEM, "MOUNTPOINT", False),
}
READONLY = {"name", "type", "creation", "used", "available", "referenced", "origin",
            "createtxg", "guid", "clones"}
# Real properties a command line may name that fake-zfs does not model (zfs_prop.c).
KNOWN_UNMODELLED = {
    "compression", "compress", "checksum", "copies", "dedup", "sync", "logbias",
    "primarycache", "secondarycache", "readonly", "rdonly", "reservation", "reserv", "quota",
    "refquota", "snapdev", "volmode", "encryption", "keyformat", "keylocation", "recordsize",
    "logicalused", "logicalreferenced", "written", "usedbysnapshots", "usedbydataset",
    "usedbychildren", "usedbyrefreservation", "compressratio", "refcompressratio",
    "canmount", "mounted", "atime", "relatime", "exec", "setuid", "devices", "xattr",
    "aclmode", "acltype", "aclinherit", "dnodesize", "redundant_metadata", "special_small_blocks",
    "snapshot_limit", "snapshot_count", "filesystem_limit", "filesystem_count", "numclones",
    "defer_destroy", "userrefs", "objsetid", "inconsistent", "version", "utf8only",
    "normalization", "casesensitivity", "vscan", "nbmand", "sharenfs", "sharesmb", "zoned",
    "context", "fscontext", "defcontext", "rootcontext", "receive_resume_token", "redact_snaps",
    "snapshots_changed", "volthreading", "prefetch", "direct", "longname", "keystatus",
    "encryptionroot", "pbkdf2iters", "overlay", "jailed", "avail", "volblock", "vol",
}
ALIASES = {"avail": "available", "refer": "referenced", "volblock": "volblocksize",
           "refreserv": "refreservation"}


def is_user_prop(name):
    """module/zcommon/zfs_prop.c zfs_prop_user()."""
    return ":" in name and re.fullmatch(r"[a-z0-9\-_.:]+", name) is not None


def canonical_prop(call, name):
    """The property a command line names: (canonical name, is_user), or the error printed and
    usage() (lib/libzfs/libzfs_util.c addlist(): "bad property list")."""
    if name in NATIVE:
        return name, False
    if name in ALIASES:
        return ALIASES[name], False
    if is_user_prop(name):
        return name, True
    if name in KNOWN_UNMODELLED or "@" in name:
        not_modelled(f"property '{name}'")
    call.error("bad property list", f"invalid property '{name}'")
    call.usage()


def used_bytes(call, name, ds):
    path = os.path.join(call.state_dir, ds["file"]) if ds.get("file") else None
    referenced = 0
    if path:
        try:
            referenced = os.stat(path).st_blocks * 512
        except OSError:
            pass
    if ds["type"] == "snapshot":
        return 0, referenced
    used = referenced + max(0, ds.get("refreservation", 0) - referenced)
    for child in children(call, name):
        used += used_bytes(call, child, call.datasets[child])[0]
    return used, referenced


def prop_value(call, name, ds, prop, literal):
    """(value, source) as lib/libzfs/libzfs_dataset.c zfs_prop_get() gives them; value None
    when the property does not apply (printed "-"). source: None ("-"), "default", "local"."""
    types = NATIVE[prop][0]
    if not types & type_bit(ds):
        return None, None
    size = (lambda n: str(n)) if literal else nicebytes
    if prop == "name":
        return name, None
    if prop == "type":
        return ds["type"], None
    if prop == "creation":
        if literal:
            return str(ds["creation"]), None
        return time.strftime("%a %b %e %k:%M %Y", time.localtime(ds["creation"])), None
    if prop in ("used", "referenced"):
        used, referenced = used_bytes(call, name, ds)
        return size(used if prop == "used" else referenced), None
    if prop == "available":
        st = os.statvfs(call.state_dir)
        return size(st.f_bavail * st.f_frsize), None
    if prop == "volsize":
        return size(ds["volsize"]), "local"  # get_numeric_property(): "must be local"
    if prop == "volblocksize":
        # dsl_prop_nvlist_add_uint64(): a source only when it is the default.
        vbs = ds["volblocksize"]
        return size(vbs), ("default" if vbs == ZVOL_DEFAULT_BLOCKSIZE else None)
    if prop == "origin":
        return ds.get("origin"), None
    if prop == "refreservation":
        value = ds.get("refreservation", 0)
        source = "local" if ds.get("refreservation_set") else "default"
        if value == 0 and not literal:
            return "none", source
        return size(value), source
    if prop == "createtxg":
        return str(ds["createtxg"]), None
    if prop == "guid":
        return str(ds["guid"]), None
    if prop == "clones":
        return ",".join(clones_of(call, name)), None
    if prop == "mountpoint":
        return "/" + name, "default"
    raise AssertionError(prop)


def user_prop(call, name, prop):
    """(value, source) of a user property, inherited down the tree as ZFS does; (None, None)
    when unset anywhere."""
    here = name
    while here is not None:
        ds = call.datasets.get(here)
        if ds is not None and prop in ds.get("props", {}):
            source = "local" if here == name else f"inherited from {here}"
            return ds["props"][prop], source
        here = parent_of(here)
    return None, None


def parse_props(call, pairs, type_, errbuf, existing=None):
    """zfs_valid_proplist() for the properties fake-zfs models: {name: value} (numbers as
    int), or the error printed and None."""
    result = {}
    for prop, value in pairs:
        if is_user_prop(prop):
            if len(prop) >= ZAP_MAXNAMELEN:
                call.error(errbuf, f"property name '{prop}' is too long")
                return None
            if len(value.encode()) >= ZAP_MAXVALUELEN:
                call.error(errbuf, "property value too long")  # zfs_setprop_error(E2BIG)
                return None
            result[prop] = value
            continue
        if type_ == SNAPSHOT:
            call.error(errbuf, "this property can not be modified for snapshots")
            return None
        canonical = ALIASES.get(prop, prop)
        if canonical not in NATIVE:
            if prop in KNOWN_UNMODELLED:
                not_modelled(f"property '{prop}'")
            call.error(errbuf, f"invalid property '{prop}'")
            return None
        if not NATIVE[canonical][0] & type_:
            call.error(errbuf, f"'{canonical}' does not apply to datasets of this type")
            return None
        if canonical in READONLY or (canonical == "volblocksize" and existing is not None):
            call.error(errbuf, f"'{canonical}' is readonly")
            return None
        if canonical == "mountpoint":
            not_modelled("setting mountpoint")
        if canonical == "refreservation" and value in ("none", "auto"):
            if value == "auto":
                not_modelled("refreservation=auto")
            result[canonical] = 0
            continue
        number, reason = nicestrtonum(value)
        if reason:
            call.error(errbuf, reason)
            return None
        if canonical == "volblocksize":
            if number < SPA_MINBLOCKSIZE or number > SPA_MAXBLOCKSIZE or number & (number - 1):
                call.error(errbuf, f"'volblocksize' must be power of 2 from 512B to "
                                   f"{nicebytes(SPA_MAXBLOCKSIZE)}")
                return None
        if canonical == "volsize" and existing is not None:
            blocksize = existing["volblocksize"]
            if number % blocksize:
                call.error(errbuf, f"'volsize' must be a multiple of volume block size "
                                   f"({nicebytes(blocksize)})")
                return None
            if number == 0:
                call.error(errbuf, "'volsize' cannot be zero")
                return None
        result[canonical] = number
    return result


def parse_prop_arg(call, arg, props):
    """cmd/zfs/zfs_main.c parseprop()."""
    if "=" not in arg:
        call.eprint("missing '=' for property=value argument\n")
        return False
    name, value = arg.split("=", 1)
    if any(name == p for p, _ in props):
        call.eprint(f"property '{name}' specified multiple times\n")
        return False
    props.append((name, value))
    return True


# ----------------------------------------------------------- getopt ----


def getopt(call, args, spec, long_ok=(), missing_message=None):
    """glibc getopt_long() as the zfs commands use it: options anywhere among the operands
    (GNU permutation) until "--"; returns ([(opt, arg)], operands). With opterr on (a spec
    not starting with ':') glibc prints its own complaint first; zfs then prints "invalid
    option 'c'" and the usage. A spec starting with ':' reports a missing argument to the
    command, which prints `missing_message` (zfs create: "missing size argument")."""
    silent = spec.startswith(":")
    opts, operands = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            operands += args[i:]
            break
        if arg.startswith("--"):
            if arg in long_ok:
                opts.append((arg, None))
                continue
            if not silent:
                call.eprint(f"zfs: unrecognized option '{arg}'\n")
            call.eprint("invalid option ''\n")
            call.usage()
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            k = spec.find(c)
            if k < 0 or c == ":":
                if not silent:
                    call.eprint(f"zfs: invalid option -- '{c}'\n")
                call.eprint(f"invalid option '{c}'\n")
                call.usage()
            if k + 1 < len(spec) and spec[k + 1] == ":":
                if j + 1 < len(arg):
                    opts.append((c, arg[j + 1:]))
                elif i < len(args):
                    opts.append((c, args[i]))
                    i += 1
                elif silent:
                    call.eprint(missing_message or f"missing argument for '{c}' option\n")
                    call.usage()
                else:
                    call.eprint(f"zfs: option requires an argument -- '{c}'\n"
                                f"invalid option '{c}'\n")
                    call.usage()
                break
            opts.append((c, None))
            j += 1
    return opts, operands


def parse_types(call, text):
    types = 0
    for token in text.split(","):
        table = {"filesystem": FILESYSTEM, "fs": FILESYSTEM, "volume": VOLUME, "vol": VOLUME,
                 "snapshot": SNAPSHOT, "snap": SNAPSHOT, "all": DATASET}
        if token == "bookmark":
            not_modelled("bookmarks")
        if token not in table:
            call.eprint(f"invalid type '{token}'\n")
            call.usage()
        types |= table[token]
    return types


def sort_key(call, name):
    """cmd/zfs/zfs_iter.c zfs_compare(): by name with the snapshot part cut off, a dataset
    before its snapshots, snapshots by createtxg."""
    base, _, _snap = name.partition("@")
    is_snap = "@" in name
    return (base.encode(), is_snap, call.datasets[name]["createtxg"] if is_snap else 0)


def for_each(call, operands, types, recurse, depth_limit, include_snaps):
    """cmd/zfs/zfs_iter.c zfs_for_each() + zfs_callback(): the sorted dataset names and the
    status (1 if an operand could not be opened)."""
    found = set()
    status = 0

    def visit(name, depth):
        ds = call.datasets[name]
        if type_bit(ds) & types or (ds["type"] == "snapshot" and include_snaps):
            found.add(name)
        if recurse and (depth_limit is None or depth < depth_limit):
            if ds["type"] == "filesystem":
                for child in children(call, name):
                    visit(child, depth + 1)
            if ds["type"] != "snapshot" and include_snaps:
                for snap in snapshots_of(call, name):
                    visit(snap, depth + 1)

    if not operands:
        recurse = True
        for pool in sorted(n for n in call.datasets if "/" not in n and "@" not in n):
            visit(pool, 0)
    else:
        argtype = types
        if recurse:
            argtype |= FILESYSTEM
            if types & SNAPSHOT:
                argtype |= VOLUME
        for operand in operands:
            if operand.startswith("/"):
                not_modelled("naming a dataset by its mount path")
            if zfs_open(call, operand, argtype) is None:
                status = 1
                continue
            visit(operand, 0)
    return sorted(found, key=lambda n: sort_key(call, n)), status


# ------------------------------------------------------------- list/get ----


def cmd_list(call, args):
    """cmd/zfs/zfs_main.c zfs_do_list()."""
    opts, operands = getopt(call, args, "jHS:d:o:prs:t:", long_ok=("--json", "--json-int"))
    fields = "name,used,available,referenced,mountpoint"
    scripted = literal = recurse = False
    depth_limit = None
    types, types_given = DATASET, False
    for opt, value in opts:
        if opt == "o":
            fields = value
        elif opt == "p":
            literal = True
        elif opt == "d":
            depth_limit = parse_depth(call, value)
            recurse = True
        elif opt == "r":
            recurse = True
        elif opt == "H":
            scripted = True
        elif opt == "t":
            types, types_given = parse_types(call, value), True
        elif opt in ("s", "S"):
            not_modelled("zfs list -s/-S")
        else:
            not_modelled("zfs list -j")
    if fields == "space" or fields == "all" or fields == "":
        if fields == "":
            call.error("bad property list", "no properties specified")
            call.usage()
        not_modelled(f"-o {fields}")
    columns = [canonical_prop(call, f) for f in fields.split(",")]
    if types in (SNAPSHOT,) and operands and not recurse:
        recurse, depth_limit = True, 1
    include_snaps = bool(types & SNAPSHOT) if types_given else False
    names, status = for_each(call, operands, types, recurse, depth_limit, include_snaps)
    rows = []
    for name in names:
        ds = call.datasets[name]
        row = []
        for prop, user in columns:
            if user:
                value, _ = user_prop(call, name, prop)
            else:
                value, _ = prop_value(call, name, ds, prop, literal)
            row.append("-" if value is None else value)
        rows.append(row)
    if scripted:
        for row in rows:
            call.print("\t".join(row) + "\n")
    else:
        headers = [NATIVE[p][1] if not u else p.upper() for p, u in columns]
        right = [NATIVE[p][2] if not u else False for p, u in columns]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        if rows:
            call.print(format_row(headers, widths, right) + "\n")
        for row in rows:
            call.print(format_row(row, widths, right) + "\n")
        if not rows and status == 0:
            call.eprint("no datasets available\n")
    raise Exit(status)


def format_row(cells, widths, right):
    """print_header()/collect_dataset(): two spaces between columns, numbers right-aligned,
    the last column unpadded when left-aligned."""
    parts = []
    for i, cell in enumerate(cells):
        if right[i]:
            parts.append(cell.rjust(widths[i]))
        elif i == len(cells) - 1:
            parts.append(cell)
        else:
            parts.append(cell.ljust(widths[i]))
    return "  ".join(parts)


def parse_depth(call, value):
    try:
        depth = int(value)
        if depth < 0:
            raise ValueError
        return depth
    except ValueError:
        call.eprint(f"invalid depth '{value}'\n")  # parse_depth()
        call.usage()


def cmd_get(call, args):
    """cmd/zfs/zfs_main.c zfs_do_get()."""
    opts, operands = getopt(call, args, ":d:o:s:jrt:Hp", long_ok=("--json", "--json-int"))
    scripted = literal = recurse = False
    depth_limit = None
    columns = ["name", "property", "value", "source"]
    sources = {"local", "default", "inherited", "received", "temporary", "none"}
    types, types_given = DATASET, False
    for opt, value in opts:
        if opt == "p":
            literal = True
        elif opt == "d":
            depth_limit = parse_depth(call, value)
            recurse = True
        elif opt == "r":
            recurse = True
        elif opt == "H":
            scripted = True
        elif opt == "o":
            columns = []
            for token in value.split(","):
                if token in ("received", "all"):
                    not_modelled(f"zfs get -o {token}")
                if token not in ("name", "property", "value", "source"):
                    call.eprint(f"invalid column name '{token}'\n")
                    call.usage()
                columns.append(token)
        elif opt == "s":
            sources = set()
            for token in value.split(","):
                if token not in ("local", "default", "inherited", "received", "temporary",
                                 "none"):
                    call.eprint(f"invalid source '{token}'\n")
                    call.usage()
                sources.add(token)
        elif opt == "t":
            types, types_given = parse_types(call, value), True
        else:
            not_modelled("zfs get -j")
    if not operands:
        call.eprint("missing property argument\n")
        call.usage()
    fields, operands = operands[0], operands[1:]
    if fields == "all":
        not_modelled("zfs get all")
    if fields == "":
        call.error("bad property list", "no properties specified")
        call.usage()
    props = [canonical_prop(call, f) for f in fields.split(",")]
    if types == SNAPSHOT and operands and not recurse:
        recurse, depth_limit = True, 1
    # zfs get does not pass ZFS_ITER_PROP_LISTSNAPS: -r shows snapshots unless -t says not.
    include_snaps = bool(types & SNAPSHOT)
    names, status = for_each(call, operands, types, recurse, depth_limit, include_snaps)
    rows = []
    for name in names:
        ds = call.datasets[name]
        for prop, user in props:
            if user:
                value, source = user_prop(call, name, prop)
            else:
                value, source = prop_value(call, name, ds, prop, literal)
            if value is None:
                value, source = "-", None
            kind = "none" if source is None else source.split(" ")[0]
            if kind not in sources:
                continue
            cells = {"name": name, "property": prop, "value": value,
                     "source": "-" if source is None else source}
            rows.append([cells[c] for c in columns])
    if scripted:
        for row in rows:
            call.print("\t".join(row) + "\n")
    elif rows:
        headers = [c.upper() for c in columns]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        right = [False] * len(columns)
        call.print(format_row(headers, widths, right) + "\n")
        for row in rows:
            call.print(format_row(row, widths, right) + "\n")
    raise Exit(status)


# --------------------------------------------------------------- create ----


def new_volume_file(call, guid, size, source=None):
    path = os.path.join(call.state_dir, "vols", f"{guid:016x}.img")
    if source is None:
        with open(path, "wb") as f:
            f.truncate(size)
    else:
        copy_sparse(source, path)
        os.truncate(path, size)
    return path


def inject_busy(call, action):
    """The injected failure: the ioctl answers EBUSY, nothing changes."""
    if call.busy:
        call.error(action, "dataset is busy")
        call.note = "busy"
        raise Exit(1)


def cmd_create(call, args):
    """cmd/zfs/zfs_main.c zfs_do_create() + libzfs zfs_create()."""
    opts, operands = getopt(call, args, ":PV:b:nso:puv",
                            missing_message="missing size argument\n")
    volume = False
    volsize = None
    props = []
    parents = noreserve = bflag = False
    for opt, value in opts:
        if opt == "V":
            volume = True
            volsize, reason = nicestrtonum(value)
            if reason:
                call.eprint(f"bad volume size '{value}': {reason}\n")
                raise Exit(1)
        elif opt == "b":
            bflag = True
            number, reason = nicestrtonum(value)
            if reason:
                call.eprint(f"bad volume block size '{value}': {reason}\n")
                raise Exit(1)
            props = [p for p in props if p[0] != "volblocksize"] + [("volblocksize", value)]
        elif opt == "o":
            if not parse_prop_arg(call, value, props):
                raise Exit(1)
        elif opt == "p":
            parents = True
        elif opt == "s":
            noreserve = True
        elif opt in ("n", "P", "v", "u"):
            not_modelled(f"zfs create -{opt}")
    if (bflag or noreserve) and not volume:
        call.eprint("'-s' and '-b' can only be used when creating a volume\n")
        call.usage()
    if not operands:
        call.eprint(f"missing {'volume' if volume else 'filesystem'} argument\n")
        call.usage()
    if len(operands) > 1:
        call.eprint("too many arguments\n")
        call.usage()
    name = operands[0]
    type_ = VOLUME if volume else FILESYSTEM
    action = f"cannot create '{name}'"
    parsed = {}
    volblocksize = ZVOL_DEFAULT_BLOCKSIZE
    if volume:
        if not zpool_open(call, name.split("/", 1)[0]):
            raise Exit(1)
        parsed = parse_props(call, props, VOLUME, action)
        if parsed is None:
            raise Exit(1)
        volblocksize = parsed.get("volblocksize", ZVOL_DEFAULT_BLOCKSIZE)
        if volblocksize < ZVOL_DEFAULT_BLOCKSIZE:  # default_volblocksize()
            call.eprint(f"Warning: volblocksize ({volblocksize}) is less than the default "
                        f"minimum block size ({ZVOL_DEFAULT_BLOCKSIZE}).\nTo reduce wasted "
                        f"space a volblocksize of {ZVOL_DEFAULT_BLOCKSIZE} is recommended.\n")
        if volsize % volblocksize:
            volsize += volblocksize - volsize % volblocksize
    if parents and validate_name(name, type_, False) is None:
        if name in call.datasets and call.datasets[name]["type"] == TYPE_NAMES[type_]:
            raise Exit(0)
        if not create_ancestors(call, name):
            raise Exit(1)
    # zfs_create()
    reason = validate_name(name, type_, True)
    if reason:
        call.error(action, reason)
        raise Exit(1)
    if nesting_too_deep(name):
        call.error(action, "maximum name nesting depth exceeded")
        raise Exit(1)
    if not check_parents(call, name):
        raise Exit(1)
    if name in call.datasets:
        call.error(action, "dataset already exists")
        raise Exit(1)
    if not volume:
        parsed = parse_props(call, props, FILESYSTEM, action)
        if parsed is None:
            raise Exit(1)
    if volume and volsize == 0:
        call.error(action, "volume size cannot be zero")
        raise Exit(1)
    inject_busy(call, action)
    ds = base_record(call, "volume" if volume else "filesystem")
    ds["props"] = {k: v for k, v in parsed.items() if is_user_prop(k)}
    if volume:
        ds["volsize"] = volsize
        ds["volblocksize"] = volblocksize
        if "refreservation" in parsed:
            ds["refreservation"], ds["refreservation_set"] = parsed["refreservation"], True
        elif not noreserve:
            ds["refreservation"] = volsize_to_reservation(volsize, volblocksize)
            ds["refreservation_set"] = True
        make_volume_device(call, name, ds, new_volume_file(call, ds["guid"], volsize))
    elif parsed.get("refreservation"):
        ds["refreservation"], ds["refreservation_set"] = parsed["refreservation"], True
    call.datasets[name] = ds
    call.dirty = True
    raise Exit(0)


def base_record(call, type_):
    return {"type": type_, "createtxg": next_txg(call), "creation": int(time.time()),
            "guid": new_guid(call), "props": {}}


def make_volume_device(call, name, ds, path):
    ds["file"] = os.path.relpath(path, call.state_dir)
    ds["loop"] = attach(path)
    call.after_commit.append((udev_add, (call.state_dir, name, ds["loop"], path)))


def create_ancestors(call, name):
    """libzfs zfs_create_ancestors(): the missing filesystems above NAME."""
    action = f"cannot create '{name}'"
    if nesting_too_deep(name):
        call.error(action, "maximum name nesting depth exceeded")
        return False
    pool = pool_of(name)
    if not pool_exists(call, pool):
        call.error(action, f"no such pool '{pool}'")
        return False
    chain = []
    here = parent_of(name)
    while here is not None and here not in call.datasets:
        chain.append(here)
        here = parent_of(here)
    if here is not None and call.datasets[here]["type"] != "filesystem":
        call.error(action, "parent is not a filesystem")
        return False
    for ancestor in reversed(chain):
        call.datasets[ancestor] = base_record(call, "filesystem")
        call.dirty = True
    return True


def cmd_clone(call, args):
    """cmd/zfs/zfs_main.c zfs_do_clone() + libzfs zfs_clone()."""
    opts, operands = getopt(call, args, "o:p")
    props = []
    parents = False
    for opt, value in opts:
        if opt == "o":
            if not parse_prop_arg(call, value, props):
                raise Exit(1)
        else:
            parents = True
    if len(operands) < 1:
        call.eprint("missing source dataset argument\n")
        call.usage()
    if len(operands) < 2:
        call.eprint("missing target dataset argument\n")
        call.usage()
    if len(operands) > 2:
        call.eprint("too many arguments\n")
        call.usage()
    source, target = operands
    snap = zfs_open(call, source, SNAPSHOT)
    if snap is None:
        raise Exit(1)
    if parents and validate_name(target, FILESYSTEM | VOLUME, False) is None:
        if target in call.datasets and call.datasets[target]["type"] != "snapshot":
            raise Exit(0)
        if not create_ancestors(call, target):
            raise Exit(1)
    action = f"cannot create '{target}'"
    reason = validate_name(target, FILESYSTEM, True)
    if reason:
        call.error(action, reason)
        raise Exit(1)
    if not check_parents(call, target):
        raise Exit(1)
    is_volume = snap.get("volsize") is not None
    existing = {"volblocksize": snap.get("volblocksize", ZVOL_DEFAULT_BLOCKSIZE)}
    parsed = parse_props(call, props, VOLUME if is_volume else FILESYSTEM, action,
                         existing if is_volume else None)
    if parsed is None:
        raise Exit(1)
    if pool_of(target) != pool_of(source):
        call.error(action, "source and target pools differ")
        raise Exit(1)
    if target in call.datasets:
        call.error(action, "dataset already exists")  # lzc_clone(): EEXIST
        raise Exit(1)
    inject_busy(call, action)
    ds = base_record(call, "volume" if is_volume else "filesystem")
    ds["origin"] = source
    ds["props"] = {k: v for k, v in parsed.items() if is_user_prop(k)}
    if "refreservation" in parsed:
        ds["refreservation"], ds["refreservation_set"] = parsed["refreservation"], True
    if is_volume:
        ds["volsize"] = parsed.get("volsize", snap["volsize"])
        ds["volblocksize"] = snap["volblocksize"]
        path = new_volume_file(call, ds["guid"], ds["volsize"],
                               source=os.path.join(call.state_dir, snap["file"]))
        make_volume_device(call, target, ds, path)
    call.datasets[target] = ds
    call.dirty = True
    raise Exit(0)


def cmd_snapshot(call, args):
    """cmd/zfs/zfs_main.c zfs_do_snapshot() + libzfs zfs_snapshot_nvl()."""
    opts, operands = getopt(call, args, "ro:")
    props = []
    recursive = False
    for opt, value in opts:
        if opt == "o":
            if not parse_prop_arg(call, value, props):
                raise Exit(1)
        else:
            recursive = True
    if not operands:
        call.eprint("missing snapshot argument\n")
        call.usage()
    multiple = recursive or len(operands) > 1
    wanted = []
    for operand in operands:
        if "@" not in operand:
            call.usage()
        fsname, snapname = operand.split("@", 1)
        if zfs_open(call, fsname, FILESYSTEM | VOLUME) is None:
            call.usage()
        wanted.append(operand)
        if recursive:
            wanted += [d + "@" + snapname for d in descendants(call, fsname) if "@" not in d]
    for snap in wanted:
        reason = validate_name(snap, SNAPSHOT, True)
        if reason:
            call.error(f"cannot create snapshot '{snap}'", reason)
            finish_snapshot_failure(call, multiple)
    if not zpool_open(call, pool_of(wanted[0])):
        finish_snapshot_failure(call, multiple)
    parsed = parse_props(call, props, SNAPSHOT, "cannot create snapshots ")
    if parsed is None:
        finish_snapshot_failure(call, multiple)
    heads = [s.split("@", 1)[0] for s in wanted]
    if len(set(heads)) != len(heads):
        call.error("cannot create snapshots ", "multiple snapshots of same fs not allowed")
        finish_snapshot_failure(call, multiple)
    failed = False
    for snap in wanted:  # lzc_snapshot(): all or nothing, an error per snapshot
        if snap in call.datasets:
            call.error(f"cannot create snapshot '{snap}'", "dataset already exists")
            failed = True
        elif call.busy:
            call.error(f"cannot create snapshot '{snap}'", "dataset is busy")
            call.note = "busy"
            failed = True
    if failed:
        finish_snapshot_failure(call, multiple)
    for snap in wanted:
        head = call.datasets[snap.split("@", 1)[0]]
        ds = base_record(call, "snapshot")
        ds["props"] = dict(parsed)
        if head["type"] == "volume":
            ds["volsize"] = head["volsize"]
            ds["volblocksize"] = head["volblocksize"]
            path = os.path.join(call.state_dir, "snaps", f"{ds['guid']:016x}.img")
            copy_sparse(os.path.join(call.state_dir, head["file"]), path)
            ds["file"] = os.path.relpath(path, call.state_dir)
        call.datasets[snap] = ds
    call.dirty = True
    raise Exit(0)


def finish_snapshot_failure(call, multiple):
    if multiple:
        call.eprint("no snapshots were created\n")
    raise Exit(1)


# -------------------------------------------------------------- destroy ----


def remove_dataset(call, name):
    """Drops NAME from the state; its device, link and files go after the commit."""
    ds = call.datasets.pop(name)
    call.dirty = True
    if ds.get("file"):
        path = os.path.join(call.state_dir, ds["file"])
        if not call.discards:
            call.after_commit.append((discard_files, (call.state_dir, call.discards)))
        call.discards.append((name, ds.get("loop"), path))


def discard_files(state_dir, discards):
    """Detaches the devices of destroyed volumes (all at once: a batch of a hundred should
    not take a hundred losetup round trips in a row), then removes links and files."""
    attached = loop_devices()
    detaching = [subprocess.Popen(["losetup", "-d", device], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for _, device, path in discards if device and attached.get(device) == path]
    for process in detaching:
        process.wait()
    for name, device, path in discards:
        if device:
            remove_link(dev_link(state_dir, name), device)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def head_busy(call, name, ds):
    """Whether the volume's device is open; /proc is read once per call."""
    if ds.get("loop") is None:
        return False
    if call.open_devices is None:
        call.open_devices = open_devices()
    return ds["loop"] in call.open_devices


def cmd_destroy(call, args):
    """cmd/zfs/zfs_main.c zfs_do_destroy()."""
    opts, operands = getopt(call, args, "vpndfrR")
    recurse = doclones = False
    for opt, _ in opts:
        if opt == "r":
            recurse = True
        elif opt == "R":
            recurse = doclones = True
        elif opt == "f":
            pass  # no mounts to force
        else:
            not_modelled(f"zfs destroy -{opt}")
    if not operands:
        call.eprint("missing dataset argument\n")
        call.usage()
    if len(operands) > 1:
        call.eprint("too many arguments\n")
        call.usage()
    target = operands[0]
    if "#" in target:
        not_modelled("bookmarks")
    if "@" in target:
        destroy_snapshots(call, target, recurse, doclones)
    destroy_head(call, target, recurse, doclones)


def dependents(call, name):
    """lib/libzfs/libzfs_iter.c zfs_iter_dependents_v2(): everything that must go before NAME,
    post-order (a dataset after its children and snapshots, a snapshot after its clones), NAME
    itself left out. Real zfs meets snapshots and clones in ZAP order; here by creation and
    name."""
    found = []

    def visit(here, first):
        if call.datasets[here]["type"] == "snapshot":
            for clone in clones_of(call, here):
                visit(clone, False)
        else:
            for child in children(call, here):
                visit(child, False)
            for snap in snapshots_of(call, here):
                visit(snap, False)
        if not first:
            found.append(here)

    visit(name, True)
    return found


def check_dependents(call, target, recurse):
    """cmd/zfs/zfs_main.c destroy_check_dependent() over the dependents: True if one blocks,
    with the message printed (one header, chosen by the first blocker)."""
    kind = call.datasets[target]["type"]
    first = True
    for name in dependents(call, target):
        if name.startswith(target) and name[len(target)] in "/@":
            if recurse:
                continue
            header = f"cannot destroy '{target}': {kind} has children\n" \
                     "use '-r' to destroy the following datasets:\n"
        else:
            if not recurse and kind != "snapshot":
                continue
            header = f"cannot destroy '{target}': {kind} has dependent clones\n" \
                     "use '-R' to destroy the following datasets:\n"
        if first:
            call.eprint(header)
            first = False
        call.eprint(name + "\n")
    return not first


def destroy_head(call, target, recurse, doclones):
    ds = zfs_open(call, target, DATASET)
    if ds is None:
        raise Exit(1)
    if not recurse and "/" not in target and ds["type"] == "filesystem":
        call.eprint(f"cannot destroy '{target}': operation does not apply to pools\n"
                    f"use 'zfs destroy -r {target}' to destroy all datasets in the pool\n"
                    f"use 'zpool destroy {target}' to destroy the pool itself\n")
        raise Exit(1)
    if not doclones and check_dependents(call, target, recurse):
        raise Exit(1)
    doomed = dependents(call, target) + [target]
    for name in doomed:
        other = call.datasets[name]
        if other["type"] != "snapshot" and head_busy(call, name, other):
            call.error(f"cannot destroy '{name}'", "dataset is busy")
            raise Exit(1)
    inject_busy(call, f"cannot destroy '{target}'")
    for name in doomed:
        remove_dataset(call, name)
    raise Exit(0)


def snapspec(call, head, spec):
    """lib/libzfs/libzfs_iter.c zfs_iter_snapspec_v2(): the snapshots SPEC names; missing
    ones are skipped (gather_snapshots() ignores ENOENT)."""
    found = []
    for part in spec.split(","):
        if "%" in part:
            first, last = part.split("%", 1)
            if last and f"{head}@{last}" not in call.datasets:
                continue
            seen_first = first == ""
            for snap in snapshots_of(call, head):
                short = snap.split("@", 1)[1]
                if short == first:
                    seen_first = True
                if seen_first:
                    found.append(snap)
                if short == last:
                    break
        elif f"{head}@{part}" in call.datasets:
            found.append(f"{head}@{part}")
    return list(dict.fromkeys(found))


def destroy_snapshots(call, target, recurse, doclones):
    head, spec = target.split("@", 1)
    if zfs_open(call, head, FILESYSTEM | VOLUME) is None:
        raise Exit(1)
    heads = [head] + ([d for d in descendants(call, head) if "@" not in d] if recurse else [])
    snaps = []
    for h in heads:
        snaps += snapspec(call, h, spec)
    error = False
    clones = []
    for snap in snaps:  # snapshot_to_nvl_cb(): each snapshot checked on its own
        if not doclones and check_dependents(call, snap, True):
            error = True
        clones += [d for d in dependents(call, snap) if d not in clones]
    if error:
        raise Exit(1)
    if not snaps:
        call.eprint("could not find any snapshots to destroy; check snapshot names.\n")
        raise Exit(1)
    for name in clones:
        ds = call.datasets[name]
        if ds["type"] != "snapshot" and head_busy(call, name, ds):
            call.error(f"cannot destroy '{name}'", "dataset is busy")
            raise Exit(1)
    if call.busy:  # lzc_destroy_snaps(): errlist names the snapshot
        call.error(f"cannot destroy snapshot {snaps[0]}", "dataset is busy")
        call.note = "busy"
        raise Exit(1)
    for name in clones + snaps:
        if name in call.datasets:
            remove_dataset(call, name)
    raise Exit(0)


# ------------------------------------------------------------------ set ----


def cmd_set(call, args):
    """cmd/zfs/zfs_main.c zfs_do_set() + libzfs zfs_prop_set_list_flags()."""
    opts, operands = getopt(call, args, "u")
    if opts:
        not_modelled("zfs set -u")
    if not operands:
        call.eprint("missing arguments\n")
        call.usage()
    if len(operands) < 2:
        if "=" not in operands[0]:
            call.eprint("missing property=value argument(s)\n")
        else:
            call.eprint("missing dataset name(s)\n")
        call.usage()
    ds_start = -1
    for i, arg in enumerate(operands):
        if "=" in arg:
            if ds_start > 0:
                call.eprint("invalid argument order\n")
                call.usage()
        elif ds_start < 0:
            ds_start = i
    if ds_start < 0:
        call.eprint("missing dataset name(s)\n")
        call.usage()
    props = []
    for arg in operands[:ds_start]:
        if not parse_prop_arg(call, arg, props):
            raise Exit(255)  # zfs_do_set() returns -1
    # zfs_for_each(): every operand opened first (a failure sets 1), then the callback on
    # each, in name order (a failure makes the status -1: exit 255).
    status = 0
    opened = []
    for name in operands[ds_start:]:
        if zfs_open(call, name, DATASET) is None:
            status = 1
        elif name not in opened:
            opened.append(name)
    for name in sorted(opened, key=lambda n: sort_key(call, n)):
        ds = call.datasets[name]
        action = f"cannot set property for '{name}'"
        parsed = parse_props(call, props, type_bit(ds), action, existing=ds)
        if parsed is None:
            status = -1
            continue
        if call.busy:
            call.error(action, "dataset is busy")
            call.note = "busy"
            status = -1
            continue
        for prop, value in parsed.items():
            if is_user_prop(prop):
                ds.setdefault("props", {})[prop] = value
            elif prop == "volsize":
                resize_volume(call, ds, value)
            elif prop == "refreservation":
                ds["refreservation"], ds["refreservation_set"] = value, True
        call.dirty = True
    raise Exit(status & 0xFF)


def resize_volume(call, ds, size):
    path = os.path.join(call.state_dir, ds["file"])
    os.truncate(path, size)
    run(["losetup", "-c", ds["loop"]])
    if ds.get("refreservation_set") and ds.get("refreservation", 0) > 0 and \
            ds["refreservation"] == volsize_to_reservation(ds["volsize"], ds["volblocksize"]):
        # zfs_add_synthetic_resv(): a thick volume's refreservation follows its volsize.
        ds["refreservation"] = volsize_to_reservation(size, ds["volblocksize"])
    ds["volsize"] = size


# -------------------------------------------------------------- program ----


def reference_code_lines(text):
    """The code of a Lua program: its lines without comments and blanks (the reference has
    no "--" inside strings)."""
    lines = []
    for number, line in enumerate(text.split("\n"), 1):
        code = line.split("--", 1)[0].strip()
        if code:
            lines.append((number, code))
    return lines


def cmd_program(call, args):
    """cmd/zfs/zfs_main.c zfs_do_channel_program(), running destroy-batch.lua."""
    opts, operands = getopt(call, args, "nt:m:j", long_ok=("--json",))
    instrlimit, memlimit = 10 * 1000 * 1000, 10 * 1024 * 1024
    sync, json_output = True, False
    for opt, value in opts:
        if opt in ("t", "m"):
            try:
                number = int(value, 0)
                if number < 0:
                    raise ValueError
            except ValueError:
                call.eprint(f"invalid argument '{value}': expected integer\n")
                call.usage()
            if opt == "t":
                instrlimit = number
            else:
                memlimit = number
        elif opt == "n":
            sync = False
        else:
            json_output = True
    if len(operands) < 2:
        call.eprint("invalid number of arguments\n")
        call.usage()
    pool, filename = operands[0], operands[1]
    names = operands[2:]
    try:
        if filename == "-":
            script = sys.stdin.read()
        else:
            with open(filename) as f:
                script = f.read()
    except OSError as e:
        call.eprint(f"cannot open '{filename}': {e.strerror}\n")
        raise Exit(1)
    if not zpool_open(call, pool):
        call.eprint(f"cannot open pool '{pool}'\n")
        raise Exit(1)
    if instrlimit > ZCP_MAX_INSTRLIMIT or memlimit == 0 or memlimit > ZCP_MAX_MEMLIMIT:
        call.eprint("Channel program execution failed:\nInvalid instruction or memory "
                    "limit.\n")
        raise Exit(1)
    lines = check_destroy_batch(filename, script)
    run_destroy_batch(call, pool, names, sync, json_output, lines)


def check_destroy_batch(filename, script):
    """Only destroy-batch.lua runs here (fake-zfs has no Lua): the script must carry its
    marker and its exact code. Returns the line numbers error positions need."""
    if DESTROY_BATCH_MARKER not in script.split("\n"):
        sys.stderr.write(f"fake-zfs: cannot run channel program '{filename}': fake-zfs has "
                         f"no Lua interpreter and runs only {DESTROY_BATCH_SCRIPT} "
                         f"(marked '{DESTROY_BATCH_MARKER}')\n")
        raise Exit(2)
    with open(DESTROY_BATCH_SCRIPT) as f:
        reference = [code for _, code in reference_code_lines(f.read())]
    given = reference_code_lines(script)
    for i, (number, code) in enumerate(given):
        if i >= len(reference) or code != reference[i]:
            sys.stderr.write(f"fake-zfs: channel program '{filename}' has the marker "
                             f"'{DESTROY_BATCH_MARKER}' but its line {number} differs from "
                             f"{DESTROY_BATCH_SCRIPT}: fake-zfs emulates only that code\n")
            raise Exit(2)
    if len(given) != len(reference):
        sys.stderr.write(f"fake-zfs: channel program '{filename}' ends before the code of "
                         f"{DESTROY_BATCH_SCRIPT} does\n")
        raise Exit(2)

    def line_of(fragment, nth=1):
        hits = [n for n, code in given if fragment in code]
        return hits[nth - 1]

    return {"exists": line_of("zfs.exists("), "nothing": line_of("error("),
            "partial": line_of("error(", 2), "sync": line_of("zfs.sync.destroy(")}


def lua_fatal(call, line, function, message):
    """A Lua error in the main chunk: zcp_error_handler()'s luaL_traceback() (module/lua/
    lauxlib.c), printed by zfs_do_channel_program() after "Channel program execution
    failed:"; exit 1 (ECHRNG)."""
    where = f'[string "channel program"]:{line}:'
    call.eprint("Channel program execution failed:\n"
                f"{where} {message}\nstack traceback:\n\t[C]: in function '{function}'\n"
                f"\t{where} in main chunk\n")
    raise Exit(1)


def check_destroy(call, name, busy):
    """zfs.check.destroy(): dsl_destroy_snapshot_check_impl() / dsl_destroy_head_check_impl()
    (module/zfs/dsl_destroy.c) as errno."""
    ds = call.datasets.get(name)
    if ds is None:
        return ENOENT
    if busy:
        return EBUSY
    if ds["type"] == "snapshot":
        return EEXIST if clones_of(call, name) else 0
    if head_busy(call, name, ds):
        return EBUSY
    if snapshots_of(call, name):
        return EBUSY
    if children(call, name):
        return EEXIST
    return 0


def run_destroy_batch(call, pool, names, sync, json_output, lines):
    """destroy-batch.lua, step for step."""
    going, todo, failed = set(), [], []
    busy_pending = call.busy
    for name in names:
        if pool_of(name) != pool:
            lua_fatal(call, lines["exists"], "exists",
                      f"dataset '{name}' is not in the target pool")
        if validate_name(name, DATASET, False) is not None or name not in call.datasets:
            continue
        dependents = clones_of(call, name) if "@" in name else snapshots_of(call, name)
        outside = any(d not in going for d in dependents)
        err = 0
        if outside or not dependents:
            err = check_destroy(call, name, busy_pending)
            if busy_pending:
                busy_pending = False
                call.note = "busy"
        if err:
            failed.append(f"failed: {err} {name}")
        else:
            going.add(name)
            todo.append(name)
    if failed:
        lua_fatal(call, lines["nothing"], "error",
                  "keel:destroy-batch: nothing destroyed\n" + "\n".join(failed))
    for i, name in enumerate(todo, 1):
        err = check_destroy(call, name, False)
        if not sync:
            lua_fatal(call, lines["sync"], "destroy",
                      "running functions from the zfs.sync submodule requires passing "
                      "sync=TRUE to lzc_channel_program() (i.e. do not specify the \"-n\" "
                      "command line argument)")
        if err:
            call.commit_partial = True
            lua_fatal(call, lines["partial"], "error",
                      f"keel:destroy-batch: destroyed {i - 1} of {len(todo)}\n"
                      f"failed: {err} {name}")
        remove_dataset(call, name)
    if json_output:
        call.print(f'{{"return":{len(todo)}}}')
    else:
        call.print("Channel program fully executed and produced output:\n"
                   f"    return: {len(todo)}\n")
    raise Exit(0)


def cmd_version(call, args):
    call.print("zfs-2.3.2-1\nzfs-kmod-2.3.2-1\n")
    raise Exit(0)


COMMANDS = {"list": cmd_list, "get": cmd_get, "create": cmd_create, "clone": cmd_clone,
            "snapshot": cmd_snapshot, "snap": cmd_snapshot, "destroy": cmd_destroy,
            "set": cmd_set, "program": cmd_program, "version": cmd_version}


# ------------------------------------------------------------ the call ----


def env_float(name, default):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError:
        sys.stderr.write(f"fake-zfs: {name}={value!r} is not a number\n")
        sys.exit(2)


def require_state_dir():
    state_dir = os.environ.get("KEEL_FAKE_ZFS_STATE")
    if not state_dir:
        sys.stderr.write("fake-zfs: KEEL_FAKE_ZFS_STATE must name the state directory\n")
        sys.exit(2)
    state_dir = os.path.abspath(state_dir)
    for sub in ("", "vols", "snaps", "udev"):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)
    return state_dir


def lock(state_dir):
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def next_call_number(state_dir):
    path = os.path.join(state_dir, "calls.seq")
    try:
        with open(path) as f:
            number = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        number = 0
    with open(path + ".tmp", "w") as f:
        f.write(f"{number + 1}\n")
    os.replace(path + ".tmp", path)
    return number


def log_call(state_dir, start, locked, status, note, argv):
    released = time.time()
    line = "\t".join([f"{start:.6f}", f"{locked:.6f}", f"{released:.6f}", str(status), note,
                      json.dumps(argv)]) + "\n"
    fd = os.open(os.path.join(state_dir, "calls.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def zfs_call(argv, early_lock):
    state_dir = require_state_dir()
    hold = env_float("KEEL_FAKE_ZFS_HOLD", 0)
    busy_rate = env_float("KEEL_FAKE_ZFS_BUSY_RATE", 0)
    crash_rate = env_float("KEEL_FAKE_ZFS_CRASH_RATE", 0)
    seed = os.environ.get("KEEL_FAKE_ZFS_SEED")
    subcommand = argv[0] if argv else None

    if early_lock is not None:
        start, locked, lock_fd = early_lock
    else:
        start = time.time()
        lock_fd = lock(state_dir)
        locked = time.time()
    number = next_call_number(state_dir)
    rng = random.Random(f"{seed}:{number}") if seed is not None else random.Random()
    crash = rng.random() < crash_rate
    crash_after = rng.random() < 0.5
    busy = subcommand in MUTATING and rng.random() < busy_rate
    if hold > 0:
        time.sleep(hold)
    if crash and not crash_after:
        log_call(state_dir, start, locked, "killed", "crash-before", argv)
        os.kill(os.getpid(), signal.SIGKILL)

    call = Call(state_dir, rng, busy, subcommand)
    call.note = "-"
    call.commit_partial = False
    if subcommand in MUTATING:
        collect_garbage(state_dir, call.state)
    status = 0
    try:
        if subcommand is None:
            call.eprint("usage: zfs command args ...\n")
            raise Exit(2)
        command = COMMANDS.get(subcommand)
        if command is None:
            call.eprint(f"unrecognized command '{subcommand}'\n")
            call.eprint("usage: zfs command args ...\n")
            raise Exit(2)
        command(call, argv[1:])
    except Exit as e:
        status = e.status
    except Exception as e:  # a bug in the fake: say so, change nothing
        call.eprint(f"fake-zfs: internal error: {e!r}\n")
        status = 2
        call.commit_partial = False
    if status == 0 or call.commit_partial:
        call.commit()
        for function, args in call.after_commit:
            function(*args)
    elif subcommand in MUTATING:
        # A failed call changes nothing: undo devices and files made before the failure.
        collect_garbage(state_dir, load_state(state_dir))
    if crash and crash_after:
        log_call(state_dir, start, locked, "killed", "crash-after", argv)
        os.kill(os.getpid(), signal.SIGKILL)
    log_call(state_dir, start, locked, status, call.note, argv)
    os.close(lock_fd)
    sys.stdout.write("".join(call.out))
    sys.stderr.write("".join(call.err))
    sys.stdout.flush()
    return status


# --------------------------------------------------------- fake-only ----


def create_pool(argv):
    state_dir = require_state_dir()
    if len(argv) != 1 or validate_name(argv[0], FILESYSTEM, True) or "/" in argv[0]:
        sys.stderr.write("usage: fake-zfs create-pool NAME\n")
        return 2
    fd = lock(state_dir)
    try:
        state = load_state(state_dir)
        if argv[0] in state["datasets"]:
            sys.stderr.write(f"cannot create '{argv[0]}': pool already exists\n")
            return 1
        txg = state["next_txg"]
        state["next_txg"] = txg + 1
        state["datasets"][argv[0]] = {"type": "filesystem", "createtxg": txg,
                                      "creation": int(time.time()),
                                      "guid": random.getrandbits(64) or 1, "props": {}}
        save_state(state_dir, state)
    finally:
        os.close(fd)
    return 0


def sleepers(state_dir):
    directory = os.path.join(state_dir, "udev")
    found = []
    for entry in os.listdir(directory) if os.path.isdir(directory) else []:
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"fake-zfs" in f.read():
                    found.append(int(entry))
                    continue
        except (OSError, ValueError):
            pass
        try:
            os.unlink(os.path.join(directory, entry))  # a sleeper that is gone
        except OSError:
            pass
    return found


def orphans(argv):
    """Everything fake-zfs holds: datasets (but pool roots), and loop devices, files, links
    and sleepers no dataset explains."""
    state_dir = require_state_dir()
    fd = lock(state_dir)
    try:
        state = load_state(state_dir)
        datasets = state["datasets"]
        lines = []
        referenced = {}
        for name in sorted(datasets):
            ds = datasets[name]
            if "/" not in name and "@" not in name:
                continue
            detail = ds.get("loop") or "-"
            lines.append(f"{ds['type']}\t{name}\t{detail}")
        for name, ds in datasets.items():
            if ds.get("file"):
                referenced[os.path.join(state_dir, ds["file"])] = ds
        for device, backing in sorted(loop_devices().items()):
            if backing.startswith(state_dir + "/"):
                ds = referenced.get(backing)
                if ds is None or ds.get("loop") != device:
                    lines.append(f"loop\t{device}\t{backing}")
        for sub in ("vols", "snaps"):
            for entry in sorted(os.listdir(os.path.join(state_dir, sub))):
                path = os.path.join(state_dir, sub, entry)
                if path not in referenced:
                    lines.append(f"file\t{path}\t-")
        wanted = {dev_link(state_dir, n): ds.get("loop") for n, ds in datasets.items()
                  if ds["type"] == "volume"}
        for link, target in stray_links(state_dir, wanted):
            lines.append(f"link\t{link}\t{target}")
        for pid in sleepers(state_dir):
            lines.append(f"sleeper\t{pid}\t-")
        for line in lines:
            print(line)
    finally:
        os.close(fd)
    return 0


def cleanup(argv):
    state_dir = os.environ.get("KEEL_FAKE_ZFS_STATE")
    if not state_dir:
        sys.stderr.write("fake-zfs: KEEL_FAKE_ZFS_STATE must name the state directory\n")
        return 2
    state_dir = os.path.abspath(state_dir)
    if not os.path.isdir(state_dir):
        return 0
    fd = lock(state_dir)
    try:
        for pid in sleepers(state_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        state = load_state(state_dir)
        for device in loop_devices_of(state_dir):
            subprocess.run(["losetup", "-d", device], capture_output=True)
        for name, ds in state["datasets"].items():
            if ds.get("loop"):
                remove_link(dev_link(state_dir, name), ds["loop"])
        for link, target in stray_links(state_dir, {}):
            remove_link(link, target)
        root = dev_root(state_dir)
        if not root.startswith(state_dir + "/"):
            for top, dirs, files in os.walk(root, topdown=False):  # the dirs we made
                if not os.listdir(top):
                    os.rmdir(top)
        subprocess.run(["rm", "-rf", "--one-file-system", state_dir])
    finally:
        os.close(fd)
    return 0


def print_script(argv):
    with open(DESTROY_BATCH_SCRIPT) as f:
        sys.stdout.write(f.read())
    return 0


def main(early_lock=None):
    """Entry point (interop/fake-zfs, the launcher, calls it with the lock it already holds
    for a zfs call)."""
    argv = sys.argv[1:]
    fake = {"create-pool": create_pool, "orphans": orphans, "cleanup": cleanup,
            "destroy-batch-script": print_script}
    if argv and argv[0] in fake:
        return fake[argv[0]](argv[1:])
    return zfs_call(argv, early_lock)
