package e2e

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestFileMetadata: file metadata (user.e2b. extended attributes) is kept
// by each file system a machine writes to under gVisor: the root file
// system's overlay, /tmp and a volume (a gofer mount of a host
// directory). It comes back from the write, stat, list and rename, and a
// command in the machine sees the attribute.
func TestFileMetadata(t *testing.T) {
	name := fmt.Sprintf("e2e-meta-%d", time.Now().UnixNano())
	if _, err := env.client.CreateVolume(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.DeleteVolume(context.Background(), name) })
	m := newMachine(t, api.CreateMachineRequest{Template: "base", Volumes: []api.VolumeMount{{Name: name, Path: "/data"}}})
	ctx := t.Context()
	md := map[string]string{"author": "mish", "stage": "e2e"}
	for _, dir := range []string{"/root", "/tmp", "/data"} {
		t.Run(dir, func(t *testing.T) {
			t.Logf("%s is on %s", dir, strings.TrimSpace(run(t, m.ID, "stat -f -c %T "+dir)))
			p := dir + "/meta.txt"
			res, err := env.client.WriteFileWith(ctx, m.ID, p, strings.NewReader("x"), client.WriteOptions{Metadata: md})
			if err != nil {
				t.Fatalf("write with metadata: %v", err)
			}
			if !maps.Equal(res.Metadata, md) {
				t.Errorf("write: got metadata %v, want %v", res.Metadata, md)
			}
			fi, err := env.client.Stat(ctx, m.ID, p)
			if err != nil || !maps.Equal(fi.Metadata, md) {
				t.Errorf("stat: got %+v, %v; want metadata %v", fi, err, md)
			}
			list, err := env.client.ListFiles(ctx, m.ID, dir, 1)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range list {
				if e.Path == p {
					found = true
					if !maps.Equal(e.Metadata, md) {
						t.Errorf("list: got metadata %v, want %v", e.Metadata, md)
					}
				}
			}
			if !found {
				t.Errorf("list of %s has no %s", dir, p)
			}
			moved, err := env.client.Rename(ctx, m.ID, p, dir+"/moved.txt")
			if err != nil || !maps.Equal(moved.Metadata, md) {
				t.Errorf("rename: got %+v, %v; want metadata %v", moved, err, md)
			}
			got := run(t, m.ID, fmt.Sprintf(`python3 -c "import os; print(os.getxattr('%s/moved.txt', 'user.e2b.author').decode())"`, dir))
			if got != "mish\n" {
				t.Errorf("getxattr in the machine: got %q, want mish", got)
			}
		})
	}
}
