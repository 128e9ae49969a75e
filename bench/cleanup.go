package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"nullspace.dev/nullspace/internal/mountinfo"
	"nullspace.dev/nullspace/internal/runtime/gvisor"
)

// verifyClean checks that nothing the benchmark made is left on the host:
// network namespaces, host-side veths, containers under either runsc root,
// snapshot images, cgroups and the firewall tables, of both servers (the
// store suite's second one has names of its own).
func verifyClean(ctx context.Context, cfg config, work string) cleanupReport {
	var rep cleanupReport
	left := func(format string, args ...any) { rep.Leftovers = append(rep.Leftovers, fmt.Sprintf(format, args...)) }
	servers := []serverSpec{mainServer(cfg.backend), secondServer(otherBackend(cfg.backend))}

	rep.Checked = append(rep.Checked, "ip netns list")
	if ip, err := lookIP(); err == nil {
		for _, name := range listNetns(ctx, ip) {
			if strings.HasPrefix(name, benchNames.NetnsPrefix) || strings.HasPrefix(name, benchNames2.NetnsPrefix) ||
				strings.HasPrefix(name, rawNetnsPrefix) {
				left("network namespace %s", name)
			}
		}
	}
	rep.Checked = append(rep.Checked, "host interfaces "+benchNames.VethPrefix+"N, "+benchNames2.VethPrefix+"N, "+rawVethPrefix+"N")
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if isSlotName(i.Name, benchNames.VethPrefix) || isSlotName(i.Name, benchNames2.VethPrefix) || isSlotName(i.Name, rawVethPrefix) {
				left("interface %s", i.Name)
			}
		}
	}
	roots := []string{filepath.Join(work, "raw", "runsc-root")}
	images := []string{filepath.Join(work, "raw", "images")}
	cgroups := []string{rawCgroupParent}
	for _, sp := range servers {
		roots = append(roots, filepath.Join(work, sp.dataDir, "runsc"))
		images = append(images, filepath.Join(work, sp.dataDir, "snapshots"))
		cgroups = append(cgroups, sp.names.CgroupParent)
	}
	for _, root := range roots {
		rep.Checked = append(rep.Checked, "runsc --root="+root+" list")
		ids, err := (&gvisor.CLI{Bin: cfg.runsc, Root: root}).List(ctx)
		if err != nil {
			left("runsc list under %s failed: %v", root, err)
		}
		for _, id := range ids {
			left("container %s under %s", id, root)
		}
	}
	// Snapshots: the server's store (killed lineages drop theirs, the rest
	// were deleted) and the raw side's images.
	for _, dir := range images {
		rep.Checked = append(rep.Checked, "snapshot images under "+dir)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			left("snapshot image %s", filepath.Join(dir, e.Name()))
		}
	}
	for _, parent := range cgroups {
		rep.Checked = append(rep.Checked, "cgroup "+parent)
		for _, d := range cgroupDirs(parent) {
			left("cgroup %s", d)
		}
	}
	rep.Checked = append(rep.Checked, "mounts under "+work)
	mps, _ := mountinfo.Under(work)
	for _, mp := range mps {
		left("mount %s", mp)
	}
	for _, sp := range servers {
		rep.Checked = append(rep.Checked, "nftables table inet "+sp.names.FirewallTable)
		if conn, err := nftables.New(); err == nil && firewallTableExists(conn, sp.names.FirewallTable) {
			left("nftables table inet %s", sp.names.FirewallTable)
		}
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
