package machine

// The disk limit. A machine's writes to its root file system land in its
// private overlay, a tmpfs upper layer whose pages gVisor keeps in one
// host file (the filestore) in the machine's directory. disk_mb bounds that
// tmpfs (runsc --overlay2=root:dir=...,size=<disk_mb>m; see
// runtime/gvisor): a machine that fills it gets ENOSPC inside, `df /`
// shows the limit, and the host file does not grow past it, so one machine
// cannot fill the host's disk.
//
// The limit is fixed at create and kept by the lineage: a resume, a start
// and an in-place restore keep the record's, a child of a snapshot takes
// the snapshot's (savedSpec.DiskMB), and a spare is made for one limit (it
// is part of its shape). runsc is given the same flag on every run, create
// and restore, but the tmpfs's size is part of the checkpointed kernel:
// a restore keeps the limit the checkpoint was taken with whatever the
// flag says (measured: a checkpoint of a 64m overlay restored with
// size=1g, or with no size, still refuses writes past 64 MiB).
//
// Records and snapshots written before the limit existed hold 0, read as
// the server's default (Manager.diskMB). A machine paused, stopped or
// snapshotted before then restores with the unbounded overlay its
// checkpoint holds, whatever it reports: only machines booted from a
// template since (and their lineages) are bounded.

const (
	// DefaultDiskMB is the disk limit of a machine whose create does not
	// set disk_mb (serve --disk-default-mb).
	DefaultDiskMB = 10 << 10
	// MaxDiskMB is the largest disk_mb a create may ask for (serve
	// --disk-max-mb).
	MaxDiskMB = 100 << 10
)
