// Package faults lets the crash tests kill the server at a named point of a
// lifecycle operation, for real: when NULLSPACE_CRASH_AT names the point,
// the process sends itself SIGKILL there, exactly as an operator's kill -9
// or an OOM kill would stop it. Unset (always, outside those tests), a
// point costs one string comparison.
package faults

import (
	"os"
	"syscall"
)

// Env is the variable naming the point to crash at.
const Env = "NULLSPACE_CRASH_AT"

var crashAt = os.Getenv(Env)

// Point marks a place an operation can be cut off. Names are
// "<operation>.<step>", e.g. "pause.checkpointed"; the crash tests list them.
func Point(name string) {
	if crashAt != "" && crashAt == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns: the signal is on its way
	}
}
