package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/sshgate"
	"nullspace.dev/nullspace/internal/store"
)

// sshListener is the SSH gateway with its listener, not yet serving.
type sshListener struct {
	gate *sshgate.Server
	ln   net.Listener
}

// startSSH makes the SSH gateway and listens on its address.
func startSSH(bg context.Context, cfg Config, mgr *machine.Manager, keys *sshgate.Keys, logger *slog.Logger) (*sshListener, error) {
	gate, err := sshgate.New(bg, sshgate.Config{DataDir: cfg.DataDir, WakeTimeout: cfg.EdgeWakeTimeout,
		RatePerSource: cfg.SSHRatePerSource, RatePerMachine: cfg.SSHRatePerMachine},
		&sshMachines{edgeMachines: edgeMachines{mgr: mgr}}, keys, logger.With("component", "ssh"))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.SSHAddr)
	if err != nil {
		return nil, fmt.Errorf("ssh: listen on %s: %w", cfg.SSHAddr, err)
	}
	logger.Info("ssh gateway", "addr", ln.Addr().String(), "host_key", ssh.FingerprintSHA256(gate.HostKey()))
	return &sshListener{gate: gate, ln: ln}, nil
}

func (l *sshListener) serve(logger *slog.Logger) {
	if err := l.gate.Serve(l.ln); err != nil && !errors.Is(err, net.ErrClosed) {
		logger.Error("ssh gateway", "err", err)
	}
}

// sshMachines is the manager as the SSH gateway sees it.
type sshMachines struct{ edgeMachines }

var _ sshgate.Machines = (*sshMachines)(nil)

func (s *sshMachines) Lineage(ctx context.Context, team, id string) (string, error) {
	rec, err := s.mgr.Get(ctx, team, id)
	if err != nil {
		return "", err
	}
	return rec.LineageID, nil
}

func (s *sshMachines) Wake(ctx context.Context, lineageID string, resume bool) (edge.Target, error) {
	rec, err := s.mgr.Wake(ctx, lineageID, resume, "ssh", nil)
	if err != nil {
		return edge.Target{}, err
	}
	return s.target(rec), nil
}

func (s *sshMachines) Agent(ctx context.Context, team, machineID string) (sshgate.Agent, error) {
	ep, err := s.mgr.AgentEndpoint(ctx, team, machineID)
	if err != nil {
		return nil, err
	}
	return agentclient.New(ep.URL, ep.Token, agentclient.SharedHTTPClient()), nil
}

// keyStore is where SSH keys are kept.
var _ sshgate.KeyStore = store.Store(nil)

func (s *sshMachines) WhileRunning(ctx context.Context, machineID string) (context.Context, func()) {
	return s.mgr.WhileRunning(ctx, machineID)
}
