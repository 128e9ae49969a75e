package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Metric names, sides and units of the results.
const (
	metricCreate      = "create_to_first_command" // CreateMachine → RunCommand(true) returns; run --detach → exec true returns
	metricCreateStart = "create_call"             // CreateMachine alone; runsc run --detach alone
	metricCreateFirst = "first_command"           // the first RunCommand; the first runsc exec
	metricExec        = "exec_round_trip"         // RunCommand(true) / runsc exec true on a warm sandbox
	metricKill        = "kill"                    // KillMachine; runsc kill + delete --force
	metricMemUsage    = "idle_memory_cgroup_usage"
	metricMemRSS      = "idle_memory_cgroup_rss"
	metricMemProcRSS  = "idle_memory_processes_rss"
	metricMemProcPSS  = "idle_memory_processes_pss"
	metricIdleCPU     = "idle_cpu_per_second" // CPU time an idle sandbox's cgroup takes per second of wall time

	// Issue 3: pause, resume, snapshots and children (hibernate.go).
	metricPause          = "pause"                           // Pause round trip; runsc checkpoint (no --leave-running)
	metricPauseDelete    = "pause_vs_checkpoint_delete"      // Pause round trip; runsc checkpoint, kill and delete
	metricPauseWindow    = "pause_window"                    // the hibernate snapshot's pause_window_ms; runsc checkpoint
	metricResume         = "resume_to_first_command"         // Resume → RunCommand(true) returns; restore --detach --direct → exec true returns
	metricResumeCall     = "resume_call"                     // Resume alone; runsc restore alone
	metricResumeFirst    = "resume_first_command"            // the first RunCommand after Resume; the first exec after restore
	metricResumeCreated  = "resume_to_first_command_created" // the same resume; restore into a container `runsc create` made (untimed) → exec true
	metricSnapshotCall   = "create_snapshot_call"            // CreateSnapshot round trip; runsc checkpoint --leave-running
	metricSnapshotWindow = "snapshot_pause_window"           // the snapshot's pause_window_ms; the same checkpoint --leave-running
	metricChild          = "child_to_first_command"          // CreateMachine{SnapshotID} → RunCommand(true); restore → exec true
	metricChildCall      = "child_create_call"               // CreateMachine{SnapshotID} alone; runsc restore alone
	metricChildFirst     = "child_first_command"             // the child's first RunCommand; the first exec after restore
	metricSnapshotSize   = "snapshot_size"                   // SizeBytes of the hibernate snapshot; the image's files

	// Issue 4: stop and start (lease.go).
	metricStop  = "stop"                   // Stop round trip; runsc checkpoint, kill and delete
	metricStart = "start_to_first_command" // Start → RunCommand(true) returns; restore --detach --direct → exec true returns

	sideNullspace = "nullspace"
	sideRaw       = "raw_runsc"

	unitMS    = "ms"
	unitBytes = "bytes"
)

// summary is the usual statistics of a series. Percentiles interpolate
// linearly between the closest ranks.
type summary struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func summarize(v []float64) summary {
	if len(v) == 0 {
		return summary{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return summary{N: len(s), P50: percentile(s, 0.5), P90: percentile(s, 0.9), Min: s[0], Max: s[len(s)-1],
		Mean: sum / float64(len(s))}
}

func percentile(sorted []float64, q float64) float64 {
	h := float64(len(sorted)-1) * q
	lo, hi := int(math.Floor(h)), int(math.Ceil(h))
	return sorted[lo] + (h-float64(lo))*(sorted[hi]-sorted[lo])
}

// series is one metric of one side on one template.
type series struct {
	Metric   string    `json:"metric"`
	Side     string    `json:"side"`
	Template string    `json:"template"`
	Unit     string    `json:"unit"`
	Samples  []float64 `json:"samples"`
	Summary  summary   `json:"summary"`
}

// comparison is one row of the table.
type comparison struct {
	Metric       string  `json:"metric"`
	Template     string  `json:"template"`
	Unit         string  `json:"unit"`
	NullspaceP50 float64 `json:"nullspace_p50"`
	RawP50       float64 `json:"raw_p50"`
	RatioP50     float64 `json:"ratio_p50"`
	NullspaceP90 float64 `json:"nullspace_p90"`
	RawP90       float64 `json:"raw_p90"`
	RatioP90     float64 `json:"ratio_p90"`
	// Target is the highest allowed p50 ratio; 0 means none.
	Target float64 `json:"target,omitempty"`
	// TargetP50 is the highest allowed nullspace p50, in Unit (exclusive);
	// 0 means none.
	TargetP50 float64 `json:"target_p50,omitempty"`
	// OK says whether the p50 meets both targets; absent without a target.
	OK *bool `json:"ok,omitempty"`
}

type cleanupReport struct {
	OK        bool     `json:"ok"`
	Checked   []string `json:"checked"`
	Leftovers []string `json:"leftovers,omitempty"`
	Error     string   `json:"error,omitempty"`
}

type runConfig struct {
	Suite     string   `json:"suite"`
	N         int      `json:"n"`
	Warmup    int      `json:"warmup"`
	SettleMS  float64  `json:"settle_ms"`
	CPUCount  int      `json:"cpu_count"`
	MemoryMB  int      `json:"memory_mb"`
	Templates []string `json:"templates"`
	RawRootfs string   `json:"raw_rootfs_template"`
	RawInit   string   `json:"raw_init"`
	// Hibernate lists the cases of the issue-3 measurements.
	Hibernate []hibernateCase `json:"hibernate_cases,omitempty"`
	// Backend is the server's (-store, -object-store); the store suite's
	// second server has the other (see Store).
	Backend backend `json:"backend"`
}

// results is everything written to -out.
type results struct {
	Host        host                   `json:"host"`
	Config      runConfig              `json:"config"`
	Comparisons []comparison           `json:"comparisons"`
	Series      []*series              `json:"series"`
	Memory      map[string][]memSample `json:"memory_samples"` // by side/template
	Server      map[string]summary     `json:"server_log_durations_ms,omitempty"`
	Notes       []string               `json:"notes,omitempty"`
	StoreSides  []string               `json:"store_sides,omitempty"` // the store suite's servers: default, other
	Store       []storeRow             `json:"store,omitempty"`       // the store suite's table
	Uploads     []uploadRecord         `json:"uploads,omitempty"`     // every upload the store suite waited for
	Cleanup     cleanupReport          `json:"cleanup"`
	Error       string                 `json:"error,omitempty"`
	index       map[string]*series
}

func newResults(cfg config) *results {
	return &results{
		Config: runConfig{Suite: cfg.suite, N: cfg.n, Warmup: cfg.warmup, SettleMS: ms(cfg.settle), CPUCount: cfg.cpus,
			MemoryMB: cfg.memoryMB, RawRootfs: "minimal", RawInit: cfg.rawInit},
		Memory: map[string][]memSample{},
		index:  map[string]*series{},
	}
}

func (r *results) add(metric, side, tmpl, unit string, v float64) {
	key := metric + "/" + side + "/" + tmpl
	s, ok := r.index[key]
	if !ok {
		s = &series{Metric: metric, Side: side, Template: tmpl, Unit: unit}
		r.index[key] = s
		r.Series = append(r.Series, s)
	}
	if unit == unitMS {
		v = math.Round(v*1000) / 1000 // µs are plenty
	}
	s.Samples = append(s.Samples, v)
}

func (r *results) addDuration(metric, side, tmpl string, d time.Duration) {
	r.add(metric, side, tmpl, unitMS, ms(d))
}

func (r *results) addMemory(side, tmpl string, m memSample) {
	r.add(metricMemUsage, side, tmpl, unitBytes, float64(m.CgroupUsage))
	r.add(metricMemRSS, side, tmpl, unitBytes, float64(m.CgroupRSS))
	r.add(metricMemProcRSS, side, tmpl, unitBytes, float64(m.RSS))
	r.add(metricMemProcPSS, side, tmpl, unitBytes, float64(m.PSS))
	key := side + "/" + tmpl
	r.Memory[key] = append(r.Memory[key], m)
}

func (r *results) hasSamples() bool { return len(r.Series) > 0 }

func (r *results) get(metric, side, tmpl string) *series {
	return r.index[metric+"/"+side+"/"+tmpl]
}

// summarize fills the summaries and the comparisons. Each nullspace series
// is compared with the raw series of its metric and label; the core metrics
// of base machines, which raw runsc does not boot, with raw minimal.
func (r *results) summarize() {
	for _, s := range r.Series {
		s.Summary = summarize(s.Samples)
	}
	rows := []string{
		metricCreate, metricExec, metricKill, metricMemUsage, metricMemRSS, metricMemProcRSS, metricMemProcPSS, metricIdleCPU,
		metricCreateStart, metricCreateFirst,
		metricPause, metricPauseDelete, metricPauseWindow, metricResume, metricResumeCall, metricResumeFirst,
		metricResumeCreated, metricSnapshotCall, metricSnapshotWindow, metricChild, metricChildCall, metricChildFirst, metricSnapshotSize,
		metricStop, metricStart,
	}
	// The targets of the issues, by metric or by metric/label.
	type target struct{ ratio, p50 float64 }
	targets := map[string]target{
		metricCreate: {ratio: 1.3},
		metricExec:   {ratio: 1.5},

		metricPause + "/" + labelIdle:  {p50: 300},
		metricResume + "/" + labelIdle: {ratio: 1.2, p50: 250},
		metricResume + "/" + label256:  {ratio: 1.2},
		metricSnapshotWindow:           {p50: 150},
	}
	if len(r.StoreSides) == 2 {
		r.Store = r.storeRows(r.StoreSides[0], r.StoreSides[1])
	}
	r.Comparisons = nil
	for _, metric := range rows {
		for _, ns := range r.Series {
			if ns.Metric != metric || ns.Side != sideNullspace {
				continue
			}
			raw := r.get(metric, sideRaw, ns.Template)
			if raw == nil {
				raw = r.get(metric, sideRaw, "minimal")
			}
			if raw == nil {
				continue
			}
			t, ok := targets[metric+"/"+ns.Template]
			if !ok {
				t = targets[metric]
			}
			c := comparison{
				Metric: metric, Template: ns.Template, Unit: ns.Unit,
				NullspaceP50: ns.Summary.P50, RawP50: raw.Summary.P50, RatioP50: ratio(ns.Summary.P50, raw.Summary.P50),
				NullspaceP90: ns.Summary.P90, RawP90: raw.Summary.P90, RatioP90: ratio(ns.Summary.P90, raw.Summary.P90),
				Target: t.ratio, TargetP50: t.p50,
			}
			if t.ratio > 0 || t.p50 > 0 {
				ok := (t.ratio == 0 || c.RatioP50 <= t.ratio) && (t.p50 == 0 || c.NullspaceP50 < t.p50)
				c.OK = &ok
			}
			r.Comparisons = append(r.Comparisons, c)
		}
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

var metricTitles = map[string]string{
	metricCreate:      "create → first command",
	metricExec:        "exec round trip (true)",
	metricKill:        "kill",
	metricMemUsage:    "idle memory: cgroup usage",
	metricMemRSS:      "idle memory: cgroup rss",
	metricMemProcRSS:  "idle memory: processes RSS",
	metricMemProcPSS:  "idle memory: processes PSS",
	metricIdleCPU:     "idle CPU, ms per second",
	metricCreateStart: "  part: CreateMachine / runsc run",
	metricCreateFirst: "  part: first RunCommand / first exec",

	metricPause:          "pause | checkpoint",
	metricPauseDelete:    "pause | checkpoint, kill, delete",
	metricPauseWindow:    "  pause window (frozen) | checkpoint",
	metricResume:         "resume → first command | restore → exec",
	metricResumeCall:     "  part: Resume / runsc restore",
	metricResumeFirst:    "  part: first RunCommand / first exec",
	metricResumeCreated:  "  resume → first command | restore into created → exec",
	metricSnapshotCall:   "create_snapshot | checkpoint --leave-running",
	metricSnapshotWindow: "  snapshot pause window | checkpoint --leave-running",
	metricChild:          "child from snapshot → first command | restore → exec",
	metricChildCall:      "  part: CreateMachine / runsc restore",
	metricChildFirst:     "  part: first RunCommand / first exec",
	metricSnapshotSize:   "snapshot size | image files",

	metricStop:  "stop | checkpoint, kill, delete",
	metricStart: "start → first command | restore → exec",
}

// printTable prints the comparisons.
func (r *results) printTable(w io.Writer) {
	fmt.Fprintf(w, "\nNullspace vs raw runsc — %d iterations, %s, %d CPUs, kernel %s, runsc %s (%s), %s\n",
		r.Config.N, r.Host.Platform, r.Host.CPUs, r.Host.Kernel, r.Host.GVisorVersion, r.Host.GVisorCommit, r.Host.Date)
	init := "busybox sleep"
	if r.Config.RawInit == "agent" {
		init = "the nullspace agent and the server's bind mounts"
	}
	fmt.Fprintf(w, "raw runsc always boots the minimal rootfs with %s as init; machines %d vCPU, %d MiB\n",
		init, r.Config.CPUCount, r.Config.MemoryMB)
	for _, hc := range r.Config.Hibernate {
		if hc.FillMiB > 0 {
			fmt.Fprintf(w, "%s: machines and raw sandboxes of %d MiB with %d MiB written to /dev/shm (tmpfs, sandbox memory) before the pause\n",
				hc.Label, hc.MemoryMB, hc.FillMiB)
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintln(tw, "metric\ttemplate\tnullspace p50\traw runsc p50\tratio\tnullspace p90\traw runsc p90\tratio p90\ttarget\tok?\t")
	for _, c := range r.Comparisons {
		target, ok := "-", "-"
		if c.OK != nil {
			var parts []string
			if c.Target > 0 {
				parts = append(parts, fmt.Sprintf("≤ %.1fx", c.Target))
			}
			if c.TargetP50 > 0 {
				parts = append(parts, "< "+format(c.TargetP50, c.Unit))
			}
			target = strings.Join(parts, ", ")
			ok = "yes"
			if !*c.OK {
				ok = "NO"
			}
		} else if c.Unit == unitBytes && c.Metric != metricSnapshotSize {
			target = "overhead " + signedMiB(c.NullspaceP50-c.RawP50)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2fx\t%s\t%s\t%.2fx\t%s\t%s\t\n", metricTitles[c.Metric], c.Template,
			format(c.NullspaceP50, c.Unit), format(c.RawP50, c.Unit), c.RatioP50,
			format(c.NullspaceP90, c.Unit), format(c.RawP90, c.Unit), c.RatioP90, target, ok)
	}
	tw.Flush()

	if len(r.Server) > 0 {
		fmt.Fprintln(w, "\nnullspace server, from its debug log (ms):")
		msgs := make([]string, 0, len(r.Server))
		for m := range r.Server {
			msgs = append(msgs, m)
		}
		slices.Sort(msgs)
		width := 0
		for _, m := range msgs {
			width = max(width, len(m))
		}
		for _, m := range msgs {
			s := r.Server[m]
			fmt.Fprintf(w, "  %-*s n=%-3d p50 %7.2f  p90 %7.2f  max %7.2f\n", width, m, s.N, s.P50, s.P90, s.Max)
		}
	}
	for _, key := range []string{sideNullspace + "/minimal", sideRaw + "/minimal"} {
		if ms := r.Memory[key]; len(ms) > 0 {
			last := ms[len(ms)-1]
			var parts []string
			shared := 0
			for _, p := range last.Procs {
				if p.SameMMAs != 0 {
					shared++
					continue
				}
				parts = append(parts, fmt.Sprintf("%s %s/%s", p.Comm, mib(float64(p.RSS)), mib(float64(p.PSS))))
			}
			fmt.Fprintf(w, "processes of an idle %s sandbox, RSS/PSS: %s (+%d sharing an address space above, not summed)\n",
				key, strings.Join(parts, ", "), shared)
		}
	}
	if r.Host.OtherSandboxes > 0 {
		fmt.Fprintf(w, "WARNING: up to %d other runsc sandboxes ran on this host meanwhile: numbers are noisier\n",
			r.Host.OtherSandboxes)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

func format(v float64, unit string) string {
	if unit == unitBytes {
		return mib(v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

func mib(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) }

func signedMiB(v float64) string {
	if v >= 0 {
		return "+" + mib(v)
	}
	return "-" + mib(-v)
}

// write writes the results as indented JSON, atomically.
func (r *results) write(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// host describes where the benchmark ran.
type host struct {
	Date          string   `json:"date"`
	Hostname      string   `json:"hostname"`
	CPUs          int      `json:"cpus"`
	CPUModel      string   `json:"cpu_model"`
	Kernel        string   `json:"kernel"`
	OS            string   `json:"os"`
	CgroupVersion int      `json:"cgroup_version"`
	GoVersion     string   `json:"go_version"`
	Platform      string   `json:"platform"`
	Runsc         string   `json:"runsc"`
	RunscVersion  string   `json:"runsc_version"`
	GVisorVersion string   `json:"gvisor_module_version"`
	GVisorCommit  string   `json:"gvisor_commit"`
	RunscFlags    []string `json:"runsc_global_flags"`
	// OtherSandboxes is the most runsc sandboxes not the benchmark's seen
	// running on the host between iterations: when not 0, others competed
	// for the CPUs and shared runsc's pages (which lowers PSS).
	OtherSandboxes int `json:"other_sandboxes_max"`
}

func hostInfo(ctx context.Context, cfg config) host {
	h := host{
		Date:          time.Now().Format(time.RFC3339),
		CPUs:          runtime.NumCPU(),
		CPUModel:      firstValue("/proc/cpuinfo", "model name"),
		Kernel:        readTrim("/proc/sys/kernel/osrelease"),
		OS:            strings.Trim(firstValue("/etc/os-release", "PRETTY_NAME"), `"`),
		CgroupVersion: 1,
		GoVersion:     runtime.Version(),
		Platform:      "systrap",
		Runsc:         cfg.runsc,
	}
	if cgroupV2() {
		h.CgroupVersion = 2
	}
	h.Hostname, _ = os.Hostname()
	if p, err := filepath.EvalSymlinks(cfg.runsc); err == nil {
		h.Runsc = p
	}
	h.RunscVersion, _ = runscVersion(ctx, cfg.runsc)
	h.GVisorVersion, h.GVisorCommit = gvisorVersion()
	return h
}

// gvisorVersion reads the pinned gVisor module from tools/runsc/go.mod, found
// above the working directory, and the commit its pseudo-version names.
func gvisorVersion() (version, commit string) {
	dir, err := os.Getwd()
	if err != nil {
		return "", ""
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "tools", "runsc", "go.mod"))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require"))
				if len(f) >= 2 && f[0] == "gvisor.dev/gvisor" {
					version = f[1]
					if i := strings.LastIndexByte(version, '-'); i >= 0 {
						commit = version[i+1:]
					}
					return version, commit
				}
			}
			return "", ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ""
		}
		dir = parent
	}
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// firstValue returns the value of the first "key: value" or "key=value" line.
func firstValue(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		for _, sep := range []string{":", "="} {
			if k, v, ok := strings.Cut(line, sep); ok && strings.TrimSpace(k) == key {
				return strings.TrimSpace(v)
			}
		}
	}
	return ""
}
