package agent

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File operations act as a user: the agent (root) switches the effective
// uid, gid and groups of one OS thread, locked to a goroutine of its own,
// for the system calls of the operation, and switches them back after.
// Linux keeps credentials per thread (glibc and Go's syscall.Setuid make
// them process-wide by repeating the call on every thread; the raw system
// calls here do not), and so does gVisor. gVisor has no setfsuid (ENOSYS),
// so the effective ids are what change; the real and saved uid stay 0,
// which is what lets the thread become root again. Changing the effective
// uid away from 0 clears the thread's effective capabilities (no
// CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN), and back to 0 restores them.
//
// A thread whose credentials could not be restored is never given back:
// its goroutine ends while still locked, and the Go runtime then ends the
// thread. Threads the runtime creates meanwhile are not cloned from it: a
// locked thread hands thread creation to the runtime's template thread.

// agentCred is the agent's own effective gid and groups, restored after an
// operation.
var agentCred struct {
	egid   int
	groups []uint32
	err    error
}

func init() {
	agentCred.egid = os.Getegid()
	gs, err := unix.Getgroups()
	for _, g := range gs {
		agentCred.groups = append(agentCred.groups, uint32(g))
	}
	agentCred.err = err
}

// switches reports whether acting as id changes the thread's credentials:
// id names another user than the agent's own.
func (id identity) switches() bool {
	return id.cred != nil && int(id.cred.Uid) != os.Geteuid()
}

// privileged reports whether id acts as root, who may write anywhere: such
// an operation refuses to follow another user's symlinks as root.
func (id identity) privileged() bool {
	if id.switches() {
		return id.cred.Uid == 0
	}
	return os.Geteuid() == 0
}

// uid is the uid id acts as.
func (id identity) uid() int {
	if id.switches() {
		return int(id.cred.Uid)
	}
	return os.Geteuid()
}

// run calls fn on a thread acting as id, or on the caller's when id is the
// agent's own user.
func (id identity) run(fn func() error) error {
	if !id.switches() {
		return fn()
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("act as user %s: the agent does not run as root: %w", id.name, syscall.EPERM)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := setThreadCred(id.cred); err != nil {
			if restoreThreadCred() == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("act as user %s: %w", id.name, err)
			return
		}
		err := fn()
		if restoreThreadCred() == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// mkdirGiven makes name in dir as root and gives it to id, on a thread
// that acts as id (inside id.run): the thread is root for the mkdir and
// the chown only. Root, or the agent's own user, has nothing to gain.
// (Not id.switches: it asks the thread, which acts as id here.)
func (id identity) mkdirGiven(dir int, name string) (err error) {
	if id.cred == nil || id.cred.Uid == 0 {
		return unix.EACCES
	}
	// Back to the user however far the switch to root got.
	defer func() {
		if serr := setThreadCred(id.cred); serr != nil {
			// The rest of the call must not go on as root.
			err = fmt.Errorf("act as user %s again: %w", id.name, serr)
		}
	}()
	if err := restoreThreadCred(); err != nil {
		return fmt.Errorf("act as root to make %s: %w", name, err)
	}
	if err := unix.Mkdirat(dir, name, 0o755); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil // made by someone else meanwhile
		}
		return err
	}
	return unix.Fchownat(dir, name, int(id.cred.Uid), int(id.cred.Gid), unix.AT_SYMLINK_NOFOLLOW)
}

// setThreadCred gives the calling thread cred's groups, gid and uid as its
// effective ones, in that order (setgroups and setresgid need root).
func setThreadCred(cred *syscall.Credential) error {
	groups := cred.Groups
	if len(groups) == 0 {
		groups = []uint32{cred.Gid}
	}
	if err := rawSetgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(cred.Gid), ^uintptr(0)); e != 0 {
		return fmt.Errorf("setresgid: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(cred.Uid), ^uintptr(0)); e != 0 {
		return fmt.Errorf("setresuid: %w", e)
	}
	return nil
}

// restoreThreadCred makes the calling thread root again, with the agent's
// gid and groups.
func restoreThreadCred() error {
	if agentCred.err != nil {
		return agentCred.err
	}
	var errs []error
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		errs = append(errs, fmt.Errorf("setresuid: %w", e))
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(agentCred.egid), ^uintptr(0)); e != 0 {
		errs = append(errs, fmt.Errorf("setresgid: %w", e))
	}
	if err := rawSetgroups(agentCred.groups); err != nil {
		errs = append(errs, fmt.Errorf("setgroups: %w", err))
	}
	return errors.Join(errs...)
}

// rawSetgroups is setgroups(2) for the calling thread only.
func rawSetgroups(groups []uint32) error {
	var p unsafe.Pointer
	if len(groups) > 0 {
		p = unsafe.Pointer(&groups[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(p), 0); e != 0 {
		return e
	}
	return nil
}

// userOfUID is the identity of a uid, from the machine's /etc/passwd when
// it has an entry.
func userOfUID(uid uint32) (identity, error) {
	return lookupIdentity(strconv.FormatUint(uint64(uid), 10))
}
