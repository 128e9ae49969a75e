package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Host is what a checkpoint depends on from the host that wrote it. gVisor
// restores a checkpoint only with the runsc build that wrote it, on the same
// platform, on a CPU that has every feature the saved tasks may use. The
// kernel release is recorded for operators; gVisor does not depend on it.
type Host struct {
	RuntimeVersion string   `json:"runtime_version"`
	Platform       string   `json:"platform"`
	Kernel         string   `json:"kernel"`
	CPUFeatures    []string `json:"cpu_features"`
}

// DetectHost describes this host. The runsc version is read from
// "<runsc>.version" (written by scripts/build-runsc.sh: runsc built from a
// module prints no version of its own); without it, the binary's SHA-256
// stands in, which is stricter but still correct.
func DetectHost(runsc, platform string) (Host, error) {
	h := Host{Platform: platform}
	bin, err := filepath.EvalSymlinks(runsc)
	if err != nil {
		return h, fmt.Errorf("runsc: %w", err)
	}
	if b, err := os.ReadFile(bin + ".version"); err == nil && strings.TrimSpace(string(b)) != "" {
		h.RuntimeVersion = strings.TrimSpace(string(b))
	} else {
		f, err := os.Open(bin)
		if err != nil {
			return h, fmt.Errorf("runsc: %w", err)
		}
		defer f.Close()
		sum := sha256.New()
		if _, err := io.Copy(sum, f); err != nil {
			return h, fmt.Errorf("runsc: %w", err)
		}
		h.RuntimeVersion = "sha256:" + hex.EncodeToString(sum.Sum(nil))[:16]
	}
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err == nil {
		h.Kernel = utsString(uts.Release[:])
	}
	h.CPUFeatures = cpuFeatures()
	return h, nil
}

func utsString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// cpuFeatures returns the CPU flags of the first processor in /proc/cpuinfo,
// sorted; nil where the file has no flags line.
func cpuFeatures() []string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if ok && (strings.TrimSpace(key) == "flags" || strings.TrimSpace(key) == "Features") {
			f := strings.Fields(val)
			sort.Strings(f)
			return f
		}
	}
	return nil
}

// CheckHost returns a snapshot_incompatible error naming the first part of
// the host that differs from the one that wrote snapshot id, or nil.
func CheckHost(id string, saved, here Host) error {
	if saved.RuntimeVersion != here.RuntimeVersion {
		return Incompatible(id, fmt.Sprintf("runsc version: it was written by %s and this host runs %s",
			saved.RuntimeVersion, here.RuntimeVersion))
	}
	if saved.Platform != here.Platform {
		return Incompatible(id, fmt.Sprintf("platform: it was written on %s and this host uses %s", saved.Platform, here.Platform))
	}
	have := make(map[string]bool, len(here.CPUFeatures))
	for _, f := range here.CPUFeatures {
		have[f] = true
	}
	var missing []string
	for _, f := range saved.CPUFeatures {
		if !have[f] {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return Incompatible(id, "CPU features: this host lacks "+strings.Join(missing, ", "))
	}
	return nil
}

// Incompatible is the error for a snapshot this host cannot restore. It never
// falls back to a fresh boot: the caller gets the error.
func Incompatible(id, what string) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotIncompatible,
		fmt.Sprintf("snapshot %s cannot be restored here: %s", id, what),
		"restore it on a host that matches, or create a new machine from a template")
}
