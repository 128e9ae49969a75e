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
// is part of its shape). Records and snapshots written before the limit
// existed hold 0, read as the server's default (Manager.diskMB).

const (
	// DefaultDiskMB is the disk limit of a machine whose create does not
	// set disk_mb (serve --disk-default-mb).
	DefaultDiskMB = 10 << 10
	// MaxDiskMB is the largest disk_mb a create may ask for (serve
	// --disk-max-mb).
	MaxDiskMB = 100 << 10
)
