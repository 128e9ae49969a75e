// Package runtime defines the seam between the machine manager and the
// sandbox technology that runs machines. The gVisor driver in
// runtime/gvisor is the real implementation; tests of the control logic may
// use a fake.
package runtime

import (
	"context"
	"errors"
)

// Spec is everything a driver needs to start one machine's container.
type Spec struct {
	// ID is the container id. It must be unique and of a fixed length across
	// all containers of a driver (runsc matches id prefixes).
	ID string
	// Dir is a per-container directory the driver owns (bundle, logs,
	// overlay filestore). It is removed by Delete.
	Dir string
	// Rootfs is the template's root filesystem. It is shared read-only by
	// every machine made from the template unless Writable is set.
	Rootfs string
	// Writable makes writes go straight to Rootfs instead of a private
	// overlay; used only to build templates.
	Writable bool
	// Args, Env and Cwd describe the init process (the agent).
	Args []string
	Env  []string
	Cwd  string
	// Hostname of the machine.
	Hostname string
	// NetnsPath is the network namespace the machine joins.
	NetnsPath string
	// CPUCount and MemoryMB are enforced through the machine's cgroup.
	CPUCount int
	MemoryMB int
	// DiskMB bounds the private overlay's upper layer, what the machine
	// writes to its root file system: past it, writes inside fail with
	// ENOSPC. 0 leaves it unbounded. A restore must be given the limit
	// the checkpointed container had.
	DiskMB int
	// Mounts are bind mounts from the host into the machine.
	Mounts []Mount
}

// Mount is a host path bind-mounted into a machine.
type Mount struct {
	Source      string
	Destination string
	ReadOnly    bool
}

// Status is a container's status as the runtime sees it.
type Status string

// Container statuses.
const (
	StatusRunning Status = "running"
	StatusCreated Status = "created"
	StatusPaused  Status = "paused"
	StatusStopped Status = "stopped"
)

// Stats are a container's resource counters, read from its cgroup.
type Stats struct {
	// CPUNanos is the CPU time used since the container started.
	CPUNanos uint64
	// MemoryBytes is the memory charged to the container now, MemoryLimit
	// its limit.
	MemoryBytes uint64
	MemoryLimit uint64
	// DiskBytes is what the container wrote to its root overlay (the
	// blocks its file store takes on the host).
	DiskBytes uint64
}

// ErrNotExist is returned by State when the runtime knows no such container.
var ErrNotExist = errors.New("container does not exist")

// State describes a container.
type State struct {
	ID     string
	Status Status
	// Pid is the host pid of the sandbox, 0 if not running.
	Pid int
}

// Driver runs machines. Implementations must be safe for concurrent use.
type Driver interface {
	// Start creates and starts a container; on error nothing is left behind.
	Start(ctx context.Context, spec Spec) error
	// Delete kills the container if it runs and removes it and its Dir.
	// Deleting a container that does not exist is not an error.
	Delete(ctx context.Context, id, dir string) error
	// State reports a container's state, or ErrNotExist.
	State(ctx context.Context, id string) (State, error)
	// List returns the ids of all containers the driver knows.
	List(ctx context.Context) ([]string, error)

	// Freeze stops every task of a running container without saving
	// anything; Thaw lets them run again. A frozen container is still
	// "running" to the manager (its sandbox lives).
	Freeze(ctx context.Context, id string) error
	Thaw(ctx context.Context, id string) error
	// Checkpoint writes a container's memory, process tree and root overlay
	// into imageDir and leaves the container as it was (running or frozen):
	// a failed checkpoint never stops a machine.
	Checkpoint(ctx context.Context, id, imageDir string) error
	// Create makes a container without starting anything in it: its sandbox
	// is up and waits. Restoring into it later skips the sandbox start, the
	// larger part of a restore's time. On error nothing is left behind.
	Create(ctx context.Context, spec Spec) error
	// Restore starts a new container from a checkpoint in imageDir, in the
	// container spec.ID made by Create if there is one (spec must then be
	// the one given to Create). spec must match the checkpointed
	// container's (same mount destinations, args, cwd); sources, netns,
	// hostname, env and cgroup may differ. On error nothing is left behind.
	Restore(ctx context.Context, spec Spec, imageDir string) error
}
