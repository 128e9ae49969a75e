package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// verifyClean checks that nothing the benchmark made is left on the host:
// network namespaces, host-side veths, containers under either runsc root,
// cgroups and the firewall table.
func verifyClean(ctx context.Context, cfg config, work string) cleanupReport {
	var rep cleanupReport
	left := func(format string, args ...any) { rep.Leftovers = append(rep.Leftovers, fmt.Sprintf(format, args...)) }

	rep.Checked = append(rep.Checked, "ip netns list")
	if ip, err := lookIP(); err == nil {
		for _, name := range listNetns(ctx, ip) {
			if strings.HasPrefix(name, benchNames.NetnsPrefix) || strings.HasPrefix(name, rawNetnsPrefix) {
				left("network namespace %s", name)
			}
		}
	}
	rep.Checked = append(rep.Checked, "host interfaces "+benchNames.VethPrefix+"N, "+rawVethPrefix+"N")
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if isSlotName(i.Name, benchNames.VethPrefix) || isSlotName(i.Name, rawVethPrefix) {
				left("interface %s", i.Name)
			}
		}
	}
	for _, root := range []string{filepath.Join(work, "server", "runsc"), filepath.Join(work, "raw", "runsc-root")} {
		rep.Checked = append(rep.Checked, "runsc --root="+root+" list")
		ids, err := (&runscCLI{bin: cfg.runsc, root: root}).list(ctx)
		if err != nil {
			left("runsc list under %s failed: %v", root, err)
		}
		for _, id := range ids {
			left("container %s under %s", id, root)
		}
	}
	for _, parent := range []string{benchNames.CgroupParent, rawCgroupParent} {
		rep.Checked = append(rep.Checked, "cgroup "+parent)
		for _, d := range cgroupDirs(parent) {
			left("cgroup %s", d)
		}
	}
	rep.Checked = append(rep.Checked, "mounts under "+work)
	for _, mp := range mountsUnder(work) {
		left("mount %s", mp)
	}
	rep.Checked = append(rep.Checked, "nftables table inet "+benchNames.FirewallTable)
	if conn, err := nftables.New(); err == nil && firewallTableExists(conn, benchNames.FirewallTable) {
		left("nftables table inet %s", benchNames.FirewallTable)
	}
	rep.OK = len(rep.Leftovers) == 0
	if rep.OK {
		fmt.Fprintln(os.Stderr, "bench: cleanup verified: nothing left ("+strings.Join(rep.Checked, "; ")+")")
	} else {
		fmt.Fprintln(os.Stderr, "bench: LEFT BEHIND:", strings.Join(rep.Leftovers, "; "))
	}
	return rep
}

// isSlotName reports whether name is prefix followed by digits only.
func isSlotName(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return false
	}
	for _, r := range rest {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// mountsUnder returns the mount points at or below dir, deepest first.
// runsc leaves one in every --root it used: null-netns, an nsfs bind mount.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder unmounts everything mounted at or below dir.
func unmountUnder(dir string) error {
	var errs []error
	for _, mp := range mountsUnder(dir) {
		if err := unix.Unmount(mp, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}
