package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
)

// The issue-12 measurements: sdk/python/bench/bench_sdk.py runs each call
// through the Python SDK and through bare http.client in one process,
// alternating which goes first, against this benchmark's server, and times
// `import nullspace` in fresh interpreters.

const (
	sidePythonSDK = "python_sdk"
	sideRawHTTP   = "raw_http"
	metricImport  = "import_nullspace"
)

// sdkMetrics are the metrics compared with raw HTTP, in table order.
var sdkMetrics = []struct{ metric, name string }{
	{"create_first_command", "create to first command"},
	{"exec_round_trip", "exec round trip"},
	{"file_write_1mib", "file write, 1 MiB"},
	{"file_read_1mib", "file read, 1 MiB"},
}

func measureSDK(ctx context.Context, cfg config, ns *nullspaceSide, res *results) error {
	py, err := exec.LookPath("python3")
	if err != nil {
		return fmt.Errorf("the sdk suite needs python3: %w", err)
	}
	sdk, err := filepath.Abs("sdk/python")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: Python SDK beside raw HTTP, %d iterations (template minimal)\n", cfg.n)
	cmd := exec.CommandContext(ctx, py, filepath.Join(sdk, "bench", "bench_sdk.py"), "-n", strconv.Itoa(cfg.n), "--template", "minimal")
	cmd.Env = append(os.Environ(), "PYTHONPATH="+sdk,
		"NULLSPACE_API_URL=http://"+ns.inst.Addr, "NULLSPACE_API_KEY="+ns.key)
	return runSampler(cmd, res, "minimal", "bench_sdk.py")
}

// runSampler runs a benchmark script and records the samples it prints.
func runSampler(cmd *exec.Cmd, res *results, tmpl, script string) error {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", script, err)
	}
	perr := readSamples(out, res, tmpl, script)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s: %w\n%s", script, err, stderr.Bytes())
	}
	return perr
}

// readSamples reads a benchmark script's samples, one JSON object per
// line: {"metric", "side", "ms"}.
func readSamples(r io.Reader, res *results, tmpl, script string) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var s struct {
			Metric, Side string
			MS           float64
		}
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			return fmt.Errorf("%s printed %q: %w", script, sc.Text(), err)
		}
		res.add(s.Metric, s.Side, tmpl, unitMS, s.MS)
	}
	return sc.Err()
}

func (r *results) printSDK(w io.Writer) {
	if r.get(metricImport, sidePythonSDK, "minimal") == nil {
		return
	}
	p50 := func(metric, side string) float64 { return r.p50(metric, side, "minimal") }
	fmt.Fprintln(w, "\nPython SDK (issue 12), p50, beside the same calls over raw HTTP from the same process:")
	for _, m := range sdkMetrics {
		sdk, raw := p50(m.metric, sidePythonSDK), p50(m.metric, sideRawHTTP)
		verdict := "ok"
		if ratio(sdk, raw) > 1.1 {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %s: SDK %.2f ms, raw HTTP %.2f ms: %.2fx (target 1.1x) %s\n", m.name, sdk, raw, ratio(sdk, raw), verdict)
	}
	imp := p50(metricImport, sidePythonSDK)
	verdict := "ok"
	if imp >= 100 {
		verdict = "MISSED"
	}
	fmt.Fprintf(w, "  import nullspace: %.1f ms (target < 100 ms) %s\n", imp, verdict)
}

// p50 is the median of a series, 0 without samples.
func (r *results) p50(metric, side, tmpl string) float64 {
	s := r.get(metric, side, tmpl)
	if s == nil || len(s.Samples) == 0 {
		return 0
	}
	v := slices.Clone(s.Samples)
	slices.Sort(v)
	return percentile(v, .5)
}
