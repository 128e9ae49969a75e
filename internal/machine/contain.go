package machine

import (
	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// exitReasoner is a driver that can tell why a container's sandbox died:
// "oom" or "pids" when its host cgroup killed it (runtime/gvisor reads the
// cgroup's counters), "" otherwise. It must be asked before the container
// is deleted.
type exitReasoner interface {
	ExitReason(id string) string
}

// sandboxExit says why a running machine's sandbox is gone: the failure
// reason (api.Failure*) and its message. failFrom adds the machine's last
// checkpoint, so that its user can go back to it.
func (m *Manager) sandboxExit(rec *store.Machine) (reason, msg string) {
	if er, ok := m.driver.(exitReasoner); ok {
		switch er.ExitReason(rec.ContainerID) {
		case "oom":
			return api.FailureOOM, "the machine ran out of memory and the host killed its sandbox (raise memory_mb)"
		case "pids":
			return api.FailurePids, "the machine's processes hit the host's pids limit and its sandbox died (a fork bomb run as root?)"
		}
	}
	return api.FailureSandboxExit, "the machine's sandbox exited"
}
