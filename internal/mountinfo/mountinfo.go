// Package mountinfo finds and removes the mounts below a directory, from
// /proc/self/mountinfo. Used before removing directories that a sandbox or
// a build may have mounted into (runsc leaves an nsfs mount, null-netns, in
// every --root it uses; debootstrap mounts /proc and /dev in its target).
package mountinfo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Under returns the mount points at or below dir, deepest first.
func Under(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		m := unescape(f[4])
		if m == dir || strings.HasPrefix(m, dir+"/") {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out), nil
}

// UnmountUnder lazily unmounts every mount point at or below dir, deepest
// first, and fails if any remains.
func UnmountUnder(dir string) error {
	mounts, err := Under(dir)
	if err != nil || len(mounts) == 0 {
		return err
	}
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil &&
			!errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	if left, err := Under(dir); err != nil || len(left) > 0 {
		return fmt.Errorf("mounts remain under %s: %v %w", dir, left, err)
	}
	return nil
}

// unescape decodes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
