package machine

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// Spares are containers created ahead of restores.
//
// Much of a restore into a fresh container is spent starting its sandbox:
// on the 2-core development host `runsc restore` of an idle machine takes
// ~140 ms into a new container and ~75 ms into one `runsc create` made
// beforehand (docs/benchmarks.md). So the manager keeps up to Config.Spares such containers, each
// made for one shape of restore (what a container's spec fixes at create:
// template, resources, agent binary, volumes) under a machine id and a
// network slot chosen in advance. Resume and create-from-snapshot take a
// spare of their shape when there is one and restore into a fresh
// container otherwise; the in-place restore of a checkpoint keeps its
// machine's id and never uses one.
//
// Which shapes: those of the newest snapshots and of the machines
// checkpointed or restored in the last minutes, most recent first (the
// likeliest to be resumed or forked next), one spare each in turn until
// the budget is spent. A spare costs ~16 MiB (sandbox and gofer waiting)
// and one network slot. Spares do not outlive the server: Shutdown removes
// them, and after a crash Reconcile drops their rows so that the orphan
// sweep removes them.
type spares struct {
	m    *Manager
	max  int
	wake chan struct{}

	mu     sync.Mutex
	idle   map[string][]*spare    // by shape key
	recent map[string]recentShape // shapes lately checkpointed or restored, by key
	// restoring counts the restores under way and lastRestore is when the
	// last one ended: spares are made only when the server is not
	// restoring (see quiet).
	restoring   int
	lastRestore time.Time
}

// spare is a created container waiting for a restore.
type spare struct {
	store.Spare
	net NetInfo
}

// shape is what a container's spec fixes at create and a restore into it
// must share (a spare made for one disk limit serves only restores of
// that limit). The rest of the spec (hostname, env, /etc files, firewall)
// is the new machine's own and is set at restore.
type shape struct {
	TeamID          string    `json:"team_id"`
	Template        string    `json:"template"`
	TemplateCreated time.Time `json:"template_created"`
	TemplateDigest  string    `json:"template_digest,omitempty"`
	CPUCount        int       `json:"cpu_count"`
	MemoryMB        int       `json:"memory_mb"`
	// DiskMB is the overlay's size limit, which `runsc create` fixes.
	DiskMB   int               `json:"disk_mb,omitempty"`
	AgentDir string            `json:"agent_dir"`
	Volumes  []api.VolumeMount `json:"volumes,omitempty"`
}

func shapeOf(teamID string, spec savedSpec) shape {
	return shape{TeamID: teamID, Template: spec.Template, TemplateCreated: spec.TemplateCreated.UTC(), TemplateDigest: spec.TemplateDigest,
		CPUCount: spec.CPUCount, MemoryMB: spec.MemoryMB, DiskMB: spec.DiskMB, AgentDir: spec.AgentDir, Volumes: spec.Volumes}
}

func (s shape) key() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// newestSnapshots bounds how many snapshots the pool looks at for shapes.
const newestSnapshots = 32

func newSpares(m *Manager, max int) *spares {
	return &spares{m: m, max: max, wake: make(chan struct{}, 1), idle: map[string][]*spare{}, recent: map[string]recentShape{}}
}

// refillDelay is how long the pool waits before it catches up after a
// change, and how long after a restore. Making a spare is a `runsc create`,
// ~70 ms of work on both cores of a small host: it must not run during a
// restore, the client's first calls to a restored machine, or the rest of
// a pause.
const refillDelay = 300 * time.Millisecond

// poke asks the pool to catch up soon (a shape was used, a snapshot was
// deleted, a spare was lost).
func (p *spares) poke() {
	time.AfterFunc(refillDelay, func() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	})
}

// take returns a spare of the shape, if one is idle and its sandbox lives.
// The pool is not refilled at once: the caller's restore would compete with
// the refill for the CPU. A successful restore calls used, which refills it
// after refillDelay; a failed one calls poke.
func (p *spares) take(ctx context.Context, sh shape) (*spare, bool) {
	if p.max <= 0 {
		return nil, false
	}
	key := sh.key()
	for {
		p.mu.Lock()
		list := p.idle[key]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil, false
		}
		sp := list[0]
		p.idle[key] = list[1:]
		p.mu.Unlock()
		if p.alive(sp) {
			return sp, true
		}
		p.m.logger.WarnContext(ctx, "spare container died; removing it", "container", sp.ContainerID)
		p.destroy(ctx, sp)
		p.poke()
	}
}

func (p *spares) alive(sp *spare) bool {
	if rc, ok := p.m.driver.(runningChecker); ok {
		if running, known := rc.Running(sp.ContainerID); known {
			return running
		}
	}
	return true
}

// restoreStarted and restoreDone bracket every restore.
func (p *spares) restoreStarted() {
	p.mu.Lock()
	p.restoring++
	p.mu.Unlock()
}

func (p *spares) restoreDone() {
	p.mu.Lock()
	p.restoring--
	p.lastRestore = time.Now()
	p.mu.Unlock()
}

// maxQuietWait bounds quiet: on a server that restores without a pause,
// spares are still made (they make the next restores faster).
var maxQuietWait = 3 * time.Second

// quiet waits until no restore is under way or has ended in the last
// refillDelay, or for maxQuietWait. It returns false if ctx ends first.
func (p *spares) quiet(ctx context.Context) bool {
	deadline := time.Now().Add(maxQuietWait)
	for {
		p.mu.Lock()
		wait := refillDelay - time.Since(p.lastRestore)
		if p.restoring > 0 {
			wait = refillDelay
		}
		p.mu.Unlock()
		if wait <= 0 || time.Now().After(deadline) {
			return true
		}
		wait = min(wait, time.Until(deadline)+time.Millisecond)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// run keeps the pool filled until ctx ends, then removes the idle spares.
func (p *spares) run(ctx context.Context) {
	defer p.drain(context.WithoutCancel(ctx))
	if p.max <= 0 {
		return
	}
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		p.fill(ctx)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-tick.C:
		}
	}
}

// fill makes the idle spares match the wanted shapes: surplus spares are
// removed first, then missing ones are created one at a time.
func (p *spares) fill(ctx context.Context) {
	want, err := p.wanted(ctx)
	if err != nil {
		p.m.logger.WarnContext(ctx, "spares: list wanted shapes", "err", err)
		return
	}
	need := map[string]int{}
	for _, sh := range want {
		need[sh.key()]++
	}
	var surplus []*spare
	p.mu.Lock()
	for key, list := range p.idle {
		if n := need[key]; len(list) > n {
			surplus = append(surplus, list[n:]...)
			p.idle[key] = list[:n]
		}
		need[key] -= len(p.idle[key])
	}
	p.mu.Unlock()
	for _, sp := range surplus {
		p.destroy(ctx, sp)
	}
	for _, sh := range want {
		key := sh.key()
		if need[key] <= 0 {
			continue
		}
		if !p.quiet(ctx) {
			return
		}
		sp, err := p.create(ctx, sh)
		if err != nil {
			if ctx.Err() == nil {
				p.m.logger.WarnContext(ctx, "spares: create", "template", sh.Template, "err", err)
			}
			return // try again on the next poke or tick
		}
		need[key]--
		p.mu.Lock()
		p.idle[key] = append(p.idle[key], sp)
		p.mu.Unlock()
	}
}

// recentUse is how long a shape stays wanted after a machine of it was
// paused, snapshotted or restored, even if its snapshots are gone.
const recentUse = 15 * time.Minute

// used records that a machine of spec's shape was checkpointed or
// restored: more restores of the shape are likely.
func (p *spares) used(teamID string, spec savedSpec) {
	if p.max <= 0 {
		return
	}
	sh := shapeOf(teamID, spec)
	p.mu.Lock()
	p.recent[sh.key()] = recentShape{at: time.Now(), sh: sh, spec: spec}
	p.mu.Unlock()
	p.poke()
}

type recentShape struct {
	at   time.Time
	sh   shape
	spec savedSpec
}

// wanted returns the shapes the pool should hold, one entry per spare: the
// distinct usable shapes of the newest snapshots and of the machines
// recently checkpointed or restored, most recent first, taken in turn.
// Running machines alone do not count: a pool that followed every create
// would spend a `runsc create` on each, mostly for nothing.
func (p *spares) wanted(ctx context.Context) ([]shape, error) {
	var uses []recentShape
	p.mu.Lock()
	for key, r := range p.recent {
		if time.Since(r.at) > recentUse {
			delete(p.recent, key)
			continue
		}
		uses = append(uses, r)
	}
	p.mu.Unlock()
	snaps, err := p.m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotReady}, Newest: newestSnapshots})
	if err != nil {
		return nil, err
	}
	for _, sn := range snaps {
		if spec, err := decodeSpec(sn); err == nil {
			uses = append(uses, recentShape{sn.CreatedAt, shapeOf(sn.TeamID, spec), spec})
		}
	}
	sort.SliceStable(uses, func(i, j int) bool { return uses[i].at.After(uses[j].at) })
	var shapes []shape
	seen := map[string]bool{}
	for _, u := range uses {
		key := u.sh.key()
		if seen[key] {
			continue
		}
		seen[key] = true
		if p.m.checkSpec(ctx, "", u.sh.TeamID, u.spec) == nil {
			shapes = append(shapes, u.sh)
		}
	}
	var out []shape
	for len(shapes) > 0 && len(out) < p.max {
		for _, sh := range shapes {
			if len(out) == p.max {
				break
			}
			out = append(out, sh)
		}
	}
	return out, nil
}

// create makes one spare: a slot, its network and the created container.
func (p *spares) create(ctx context.Context, sh shape) (*spare, error) {
	m := p.m
	t0 := time.Now()
	sp := &spare{Spare: store.Spare{MachineID: newMachineID(), ContainerID: newContainerID(), Shape: sh.key(), CreatedAt: t0.UTC()}}
	// Spares count, and are made only where a machine would fit; a
	// machine that does not fit removes them (admit).
	if err := m.admitSpare(ctx, sh.MemoryMB, func() error { return m.store.CreateSpare(ctx, &sp.Spare, m.net.Slots()) }); err != nil {
		return nil, err
	}
	rec := sp.machine(sh)
	err := func() error {
		rootfs, err := m.specRootfs(ctx, "", savedSpec{Template: sh.Template, TemplateCreated: sh.TemplateCreated, TemplateDigest: sh.TemplateDigest})
		if err != nil {
			return err
		}
		if sp.net, err = m.net.Setup(ctx, sp.Slot); err != nil {
			return err
		}
		spec, err := m.machineSpec(rec, sp.net, rootfs, nil, "")
		if err != nil {
			return err
		}
		return m.driver.Create(ctx, spec)
	}()
	if err != nil {
		p.destroy(ctx, sp)
		return nil, err
	}
	m.logger.DebugContext(ctx, "spare created", "machine_id", sp.MachineID, "template", sh.Template, "took", time.Since(t0))
	return sp, nil
}

// machine is the record a spare's container is made for.
func (sp *spare) machine(sh shape) *store.Machine {
	return &store.Machine{ID: sp.MachineID, TeamID: sh.TeamID, Template: sh.Template, CPUCount: sh.CPUCount,
		MemoryMB: sh.MemoryMB, DiskMB: sh.DiskMB, Slot: sp.Slot, ContainerID: sp.ContainerID, AgentDir: sh.AgentDir, Volumes: sh.Volumes}
}

// destroy removes a spare that is not idle (taken, or removed from idle by
// the caller): its container, network, directory and row.
func (p *spares) destroy(ctx context.Context, sp *spare) {
	ctx = context.WithoutCancel(ctx)
	rec := &store.Machine{ID: sp.MachineID, ContainerID: sp.ContainerID, Slot: sp.Slot}
	err := errors.Join(p.m.release(ctx, rec), p.m.store.DeleteSpare(ctx, sp.MachineID))
	if err != nil {
		p.m.logger.WarnContext(ctx, "spares: remove", "machine_id", sp.MachineID, "err", err)
	}
}

// drain removes every idle spare and says how many it removed.
func (p *spares) drain(ctx context.Context) int {
	p.mu.Lock()
	var all []*spare
	for key, list := range p.idle {
		all = append(all, list...)
		delete(p.idle, key)
	}
	p.mu.Unlock()
	for _, sp := range all {
		p.destroy(ctx, sp)
	}
	return len(all)
}

// Spares returns the idle spares.
func (m *Manager) Spares() []store.Spare {
	m.spares.mu.Lock()
	defer m.spares.mu.Unlock()
	var out []store.Spare
	for _, list := range m.spares.idle {
		for _, sp := range list {
			out = append(out, sp.Spare)
		}
	}
	return out
}

// RunSpares keeps the pool of spare containers filled until ctx ends, then
// removes them. It returns when they are gone.
func (m *Manager) RunSpares(ctx context.Context) { m.spares.run(ctx) }
