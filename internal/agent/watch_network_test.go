package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWatchNetworkMounts: a watch asked not to watch network file systems
// (allow_network_mounts=false, envd's default) refuses a directory on
// one; by default, and with allow_network_mounts=true, it is watched. The
// host has no network file system, so statfs is faked.
func TestWatchNetworkMounts(t *testing.T) {
	real := statfsType
	t.Cleanup(func() { statfsType = real })
	a, err := New(Config{Token: "tok"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	dir := t.TempDir()
	tests := []struct {
		name   string
		fsType int64
		allow  string // "" leaves the parameter out
		want   int
	}{
		{"local, refusing network", unix.EXT4_SUPER_MAGIC, "false", http.StatusOK},
		{"nfs, refusing network", unix.NFS_SUPER_MAGIC, "false", http.StatusBadRequest},
		{"fuse, refusing network", unix.FUSE_SUPER_MAGIC, "false", http.StatusBadRequest},
		{"smb2, refusing network", unix.SMB2_SUPER_MAGIC, "false", http.StatusBadRequest},
		{"nfs, allowed", unix.NFS_SUPER_MAGIC, "true", http.StatusOK},
		{"nfs, by default", unix.NFS_SUPER_MAGIC, "", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			statfsType = func(string) (int64, error) { return tt.fsType, nil }
			q := url.Values{"path": {dir}}
			if tt.allow != "" {
				q.Set("allow_network_mounts", tt.allow)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/files/watch?"+q.Encode(), nil)
			req.Header.Set("Authorization", "Bearer tok")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}
