package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/template"
)

// The issue-3 measurements: pause, resume, snapshots and children from them,
// each beside its raw runsc counterpart in the same run.
//
//	nullspace                                  raw runsc
//	Pause round trip                           checkpoint (no --leave-running)
//	Resume → RunCommand(true) returns          restore --detach --direct → exec /bin/true returns
//	  (the same samples)                       the same into a container `runsc create` made first
//	CreateSnapshot round trip, pause_window_ms checkpoint --leave-running
//	CreateMachine{SnapshotID} → RunCommand     restore --detach --direct → exec /bin/true returns
//	snapshot size_bytes                        size of the image files
//
// A raw restore goes into a fresh network namespace and a fresh bundle
// whose config.json is the checkpointed one but for the namespace path and
// the cgroup (both made outside the timed window), with the same global
// flags as the gvisor driver's Restore, --overlay2=root:dir=<new dir>
// included.
//
// The 256 MiB case writes 256 MiB of random bytes into /dev/shm before the
// pause, on both sides. tmpfs pages live in the sandbox's memory, so they are
// in the checkpoint's page file (259 MiB, against 3.3 MiB idle), and
// they survive a restore, whereas a process started with `runsc exec` does
// not (checked by hand: a detached exec'd sleep is gone after restore, the
// file is there). The file's size is checked after every resume.

// Labels of the hibernate series (the template column of the table).
const (
	labelIdle = "minimal"
	label256  = "minimal+256MiB"
)

const (
	fillMiB     = 256  // written to /dev/shm in the big case
	bigMemoryMB = 1024 // memory of machines and raw sandboxes in the big case

	fillPath = "/dev/shm/fill"
	// setupPhase names the server's records outside the timed operations of
	// the hibernate suite, so that they do not mix with the core suite's.
	setupPhase = "hibernate setup"
)

// hibernateCase is a kind of machine that is paused and resumed.
type hibernateCase struct {
	Label    string `json:"label"`
	MemoryMB int    `json:"memory_mb"`
	FillMiB  int    `json:"fill_mib"` // written to /dev/shm before the pause
}

func hibernateCases(cfg config) []hibernateCase {
	cases := []hibernateCase{{Label: labelIdle, MemoryMB: cfg.memoryMB}}
	if !cfg.skip256 {
		cases = append(cases, hibernateCase{Label: label256, MemoryMB: max(bigMemoryMB, cfg.memoryMB), FillMiB: fillMiB})
	}
	return cases
}

// fillArgv writes mib MiB of random bytes to fillPath.
func fillArgv(mib int) []string {
	return []string{"/bin/dd", "if=/dev/urandom", "of=" + fillPath, "bs=1M", "count=" + strconv.Itoa(mib)}
}

var statFillArgv = []string{"/bin/stat", "-c", "%s", fillPath}

func checkFill(stdout string, mib int) error {
	if got, want := strings.TrimSpace(stdout), strconv.Itoa(mib<<20); got != want {
		return fmt.Errorf("%s after the restore: got %q bytes, want %s", fillPath, got, want)
	}
	return nil
}

// measureHibernate runs the issue-3 measurements, interleaving the sides.
func measureHibernate(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results, watchOthers func()) error {
	cases := hibernateCases(cfg)
	res.Config.Hibernate = cases
	labels := make([]string, len(cases))
	for i, hc := range cases {
		labels[i] = fmt.Sprintf("%s (%d MiB)", hc.Label, hc.MemoryMB)
	}
	fmt.Fprintf(os.Stderr, "bench: pause, resume, create_snapshot and child, %d iterations (%s; raw runsc)\n",
		cfg.n, strings.Join(labels, ", "))
	ns.tap.setPhase(setupPhase)
	defer ns.tap.setPhase("")
	for i := range cfg.n {
		var pairs [][2]func() error
		for _, hc := range cases {
			pairs = append(pairs, [2]func() error{
				func() error { return raw.pauseResume(ctx, hc, res) },
				func() error { return ns.pauseResume(ctx, hc, res) },
			})
		}
		pairs = append(pairs, [2]func() error{
			func() error { return raw.snapshotChild(ctx, cases[0], res) },
			func() error { return ns.snapshotChild(ctx, cases[0], res) },
		})
		for _, p := range pairs {
			// Alternate which side goes first so that drift hits both alike.
			if i%2 == 1 {
				p[0], p[1] = p[1], p[0]
			}
			for _, step := range p {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := step(); err != nil {
					return err
				}
			}
		}
		watchOthers()
		progress(i+1, cfg.n)
	}
	return nil
}

// ready creates a machine for hc, runs its first command, fills it and lets
// it settle; it returns the machine's id.
func (s *nullspaceSide) ready(ctx context.Context, hc hibernateCase) (string, error) {
	id, _, _, err := s.create(ctx, template.Minimal, hc.MemoryMB)
	if err != nil {
		return id, err
	}
	if hc.FillMiB > 0 {
		if _, err := s.run(ctx, id, fillArgv(hc.FillMiB)...); err != nil {
			return id, err
		}
	}
	return id, sleep(ctx, s.cfg.settle)
}

// timed runs op during the named phase of the server's log and returns the
// time it took.
func (s *nullspaceSide) timed(phase string, op func() error) (time.Duration, error) {
	s.tap.setPhase(phase)
	defer s.tap.setPhase(setupPhase)
	start := time.Now()
	err := op()
	return time.Since(start), err
}

// pauseResume measures one machine: pause, then resume to its first
// command. Killing the resumed machine ends the lineage, which kills the
// paused alias and drops the hibernate snapshot.
func (s *nullspaceSide) pauseResume(ctx context.Context, hc hibernateCase, res *results) error {
	id, err := s.ready(ctx, hc)
	if err != nil {
		return err
	}
	var sn *api.Snapshot
	paused, err := s.timed("pause "+hc.Label, func() (err error) {
		sn, err = s.client.Pause(ctx, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("pause machine %s: %w", id, err)
	}
	res.addDuration(metricPause, sideNullspace, hc.Label, paused)
	res.addDuration(metricPauseDelete, sideNullspace, hc.Label, paused)
	res.add(metricPauseWindow, sideNullspace, hc.Label, unitMS, float64(sn.PauseWindowMS))
	res.add(metricSnapshotSize, sideNullspace, hc.Label, unitBytes, float64(sn.SizeBytes))

	var (
		m      *api.Machine
		called time.Duration
	)
	total, err := s.timed("resume "+hc.Label, func() error {
		start := time.Now()
		var err error
		if m, err = s.client.Resume(ctx, sn.ID); err != nil {
			return fmt.Errorf("resume snapshot %s of machine %s: %w", sn.ID, id, err)
		}
		called = time.Since(start)
		s.live[m.ID] = true
		return s.runTrue(ctx, m.ID)
	})
	if err != nil {
		return err
	}
	res.addDuration(metricResume, sideNullspace, hc.Label, total)
	res.addDuration(metricResumeCreated, sideNullspace, hc.Label, total)
	res.addDuration(metricResumeCall, sideNullspace, hc.Label, called)
	res.addDuration(metricResumeFirst, sideNullspace, hc.Label, total-called)
	if hc.FillMiB > 0 {
		out, err := s.run(ctx, m.ID, statFillArgv...)
		if err != nil {
			return err
		}
		if err := checkFill(out, hc.FillMiB); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID, err)
		}
	}
	if err := s.kill(ctx, &warmMachine{id: m.ID}, nil); err != nil {
		return err
	}
	delete(s.live, id) // the paused alias went with the lineage
	return nil
}

// snapshotChild measures a reusable snapshot of a running machine and a
// child created from it to its first command.
func (s *nullspaceSide) snapshotChild(ctx context.Context, hc hibernateCase, res *results) error {
	id, err := s.ready(ctx, hc)
	if err != nil {
		return err
	}
	var sn *api.Snapshot
	took, err := s.timed("create_snapshot", func() (err error) {
		sn, err = s.client.CreateSnapshot(ctx, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("snapshot machine %s: %w", id, err)
	}
	res.addDuration(metricSnapshotCall, sideNullspace, hc.Label, took)
	res.add(metricSnapshotWindow, sideNullspace, hc.Label, unitMS, float64(sn.PauseWindowMS))

	var (
		child  *api.Machine
		called time.Duration
	)
	total, err := s.timed("child", func() error {
		start := time.Now()
		var err error
		if child, err = s.client.CreateMachine(ctx, api.CreateMachineRequest{SnapshotID: sn.ID}); err != nil {
			return fmt.Errorf("create machine from snapshot %s: %w", sn.ID, err)
		}
		called = time.Since(start)
		s.live[child.ID] = true
		return s.runTrue(ctx, child.ID)
	})
	if err != nil {
		return err
	}
	res.addDuration(metricChild, sideNullspace, hc.Label, total)
	res.addDuration(metricChildCall, sideNullspace, hc.Label, called)
	res.addDuration(metricChildFirst, sideNullspace, hc.Label, total-called)
	for _, mid := range []string{child.ID, id} {
		if err := s.kill(ctx, &warmMachine{id: mid}, nil); err != nil {
			return err
		}
	}
	if err := s.client.DeleteSnapshot(ctx, sn.ID, false); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", sn.ID, err)
	}
	return nil
}

// imagesDir holds the raw side's checkpoint images, one directory per
// checkpointed container.
func (r *rawSide) imagesDir() string { return filepath.Join(r.dir, "images") }

// ready runs a raw sandbox for hc, its first exec and the fill, and lets it
// settle.
func (r *rawSide) ready(ctx context.Context, hc hibernateCase) (*rawContainer, error) {
	c, err := r.prepare(ctx, hc.MemoryMB)
	if err != nil {
		return nil, err
	}
	if err := r.start(ctx, c); err != nil {
		return c, err
	}
	if err := r.execTrueIn(ctx, c); err != nil {
		return c, err
	}
	if hc.FillMiB > 0 {
		if err := r.runsc.RunLogged(ctx, "", c.log(), append([]string{"exec", c.id}, fillArgv(hc.FillMiB)...)...); err != nil {
			return c, err
		}
	}
	return c, sleep(ctx, r.cfg.settle)
}

// checkpoint checkpoints c into a new image directory, as the gvisor
// driver's Checkpoint does but for --leave-running, which is the caller's.
func (r *rawSide) checkpoint(ctx context.Context, c *rawContainer, leaveRunning bool) (image string, took time.Duration, err error) {
	image = filepath.Join(r.imagesDir(), c.id)
	if err := os.MkdirAll(image, 0o700); err != nil {
		return "", 0, err
	}
	args := []string{"checkpoint"}
	if leaveRunning {
		args = append(args, "--leave-running")
	}
	args = append(args, "--image-path="+image, c.id)
	start := time.Now()
	if _, err := r.runsc.Output(ctx, args...); err != nil {
		return image, 0, err
	}
	return image, time.Since(start), nil
}

// restore restores image into a new sandbox, in a fresh namespace with a
// fresh bundle (made first, untimed), and runs its first exec. With
// created, the container is made with `runsc create` first (untimed, and
// left to settle) and the image restored into it.
func (r *rawSide) restore(ctx context.Context, image string, memoryMB int, created bool) (c *rawContainer, restored, first time.Duration, err error) {
	if c, err = r.prepare(ctx, memoryMB); err != nil {
		return nil, 0, 0, err
	}
	r.live[c.id] = c
	if created {
		if err := r.runsc.RunLogged(ctx, "root:dir="+filepath.Join(c.dir, "overlay"), c.log(),
			"create", "--bundle="+filepath.Join(c.dir, "bundle"), c.id); err != nil {
			return c, 0, 0, err
		}
		if err := sleep(ctx, 300*time.Millisecond); err != nil {
			return c, 0, 0, err
		}
	}
	start := time.Now()
	err = r.runsc.RunLogged(ctx, "root:dir="+filepath.Join(c.dir, "overlay"), c.log(),
		"restore", "--detach", "--direct", "--image-path="+image, "--bundle="+filepath.Join(c.dir, "bundle"), c.id)
	if err != nil {
		return c, 0, 0, err
	}
	restored = time.Since(start)
	if err := r.execTrueIn(ctx, c); err != nil {
		return c, 0, 0, err
	}
	return c, restored, time.Since(start) - restored, nil
}

// remove kills and deletes c as the gvisor driver's Delete does: kill fails
// on a sandbox a checkpoint stopped, and only the delete counts.
func (r *rawSide) remove(ctx context.Context, c *rawContainer) error {
	r.runsc.Output(ctx, "kill", "--all", c.id, "KILL")
	if _, err := r.runsc.Output(ctx, "delete", "--force", c.id); err != nil {
		return err
	}
	delete(r.live, c.id)
	return nil
}

// checkpointRemove checkpoints c (which stops its sandbox), then kills and
// deletes it, and frees its network: the raw side of a pause and of a stop.
func (r *rawSide) checkpointRemove(ctx context.Context, c *rawContainer) (image string, took, deleted time.Duration, err error) {
	if image, took, err = r.checkpoint(ctx, c, false); err != nil {
		return image, 0, 0, err
	}
	start := time.Now()
	if err := r.remove(ctx, c); err != nil {
		return image, 0, 0, err
	}
	deleted = time.Since(start)
	return image, took, deleted, r.release(ctx, c)
}

// pauseResume is the raw counterpart of a pause and resume: checkpoint
// (which stops the sandbox), delete, then restore to the first exec.
func (r *rawSide) pauseResume(ctx context.Context, hc hibernateCase, res *results) error {
	c, err := r.ready(ctx, hc)
	if err != nil {
		return err
	}
	image, took, deleted, err := r.checkpointRemove(ctx, c)
	if err != nil {
		return err
	}
	res.addDuration(metricPause, sideRaw, hc.Label, took)
	res.addDuration(metricPauseDelete, sideRaw, hc.Label, took+deleted)
	res.addDuration(metricPauseWindow, sideRaw, hc.Label, took)
	size, err := dirSize(image)
	if err != nil {
		return err
	}
	res.add(metricSnapshotSize, sideRaw, hc.Label, unitBytes, float64(size))

	c2, restored, first, err := r.restore(ctx, image, hc.MemoryMB, false)
	if err != nil {
		return err
	}
	res.addDuration(metricResume, sideRaw, hc.Label, restored+first)
	res.addDuration(metricResumeCall, sideRaw, hc.Label, restored)
	res.addDuration(metricResumeFirst, sideRaw, hc.Label, first)
	// The same image into a container made beforehand, as the server's
	// spares are: what is left of a restore when everything that can be
	// made ahead is.
	c3, restored, first, err := r.restore(ctx, image, hc.MemoryMB, true)
	if err != nil {
		return err
	}
	res.addDuration(metricResumeCreated, sideRaw, hc.Label, restored+first)
	if err := r.kill(ctx, c3, nil); err != nil {
		return err
	}
	if hc.FillMiB > 0 {
		out, err := r.runsc.Output(ctx, append([]string{"exec", c2.id}, statFillArgv...)...)
		if err != nil {
			return err
		}
		if err := checkFill(string(out), hc.FillMiB); err != nil {
			return fmt.Errorf("raw container %s: %w", c2.id, err)
		}
	}
	if err := r.kill(ctx, c2, nil); err != nil {
		return err
	}
	return os.RemoveAll(image)
}

// snapshotChild is the raw counterpart of create_snapshot and a child:
// checkpoint --leave-running, then restore the image to the first exec.
func (r *rawSide) snapshotChild(ctx context.Context, hc hibernateCase, res *results) error {
	c, err := r.ready(ctx, hc)
	if err != nil {
		return err
	}
	image, took, err := r.checkpoint(ctx, c, true)
	if err != nil {
		return err
	}
	res.addDuration(metricSnapshotCall, sideRaw, hc.Label, took)
	res.addDuration(metricSnapshotWindow, sideRaw, hc.Label, took)
	child, restored, first, err := r.restore(ctx, image, hc.MemoryMB, false)
	if err != nil {
		return err
	}
	res.addDuration(metricChild, sideRaw, hc.Label, restored+first)
	res.addDuration(metricChildCall, sideRaw, hc.Label, restored)
	res.addDuration(metricChildFirst, sideRaw, hc.Label, first)
	for _, x := range []*rawContainer{child, c} {
		if err := r.kill(ctx, x, nil); err != nil {
			return err
		}
	}
	return os.RemoveAll(image)
}

// dirSize sums the sizes of the regular files in dir.
func dirSize(dir string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return 0, err
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n, nil
}
