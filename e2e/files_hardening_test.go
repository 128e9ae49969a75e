package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestFilesHardening: the file API is no root-owned confused deputy, in a
// real gVisor machine of the base template (user "user", uid 1000),
// through the Nullspace API and through the E2B layer. A link to
// /etc/shadow the user planted in its home is not written through; /dev/null
// and a FIFO stay what they are; DELETE /proc answers at once; /tmp and
// /etc/hosts, which the machine mounts, are refused before anything goes;
// the user cannot read /etc/shadow.
func TestFilesHardening(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	ctx := t.Context()
	res, err := env.client.RunCommand(ctx, m.ID, api.RunCommandRequest{User: "user",
		Shell: "mkdir -p /home/user/w && ln -s /etc/shadow /home/user/w/notes.txt && mkfifo /home/user/w/fifo"})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("plant the link as user: %v %+v", err, res)
	}
	shadow := run(t, m.ID, "sha256sum /etc/shadow")
	run(t, m.ID, "touch /tmp/keep")
	hosts := run(t, m.ID, "cat /etc/hosts")
	user := env.client.AsUser("user")

	status := func(err error) (int, string) {
		if ae, ok := err.(*client.APIError); ok {
			return ae.Status, ae.Code + ": " + ae.Message
		}
		return 0, ""
	}
	write := func(c *client.Client, path string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.WriteFileBytes(ctx, m.ID, path, []byte("pwned\n"), 0)
			return err
		}
	}
	tests := []struct {
		name       string
		op         func(context.Context) error
		wantStatus int
	}{
		{"root writes through the user's link to /etc/shadow", write(env.client, "/home/user/w/notes.txt"), 403},
		{"user writes through its link to /etc/shadow", write(user, "/home/user/w/notes.txt"), 403},
		{"user reads /etc/shadow", func(ctx context.Context) error { _, err := user.ReadFileBytes(ctx, m.ID, "/etc/shadow"); return err }, 403},
		{"PUT /dev/null", write(env.client, "/dev/null"), 400},
		{"PUT /dev/zero", write(env.client, "/dev/zero"), 400},
		{"PUT a FIFO", write(env.client, "/home/user/w/fifo"), 400},
		{"DELETE /proc recursive", func(ctx context.Context) error { return env.client.Remove(ctx, m.ID, "/proc", true) }, 400},
		{"DELETE /tmp recursive", func(ctx context.Context) error { return env.client.Remove(ctx, m.ID, "/tmp", true) }, 400},
		{"PUT /etc/hosts", write(env.client, "/etc/hosts"), 400},
		{"user removes /etc/passwd", func(ctx context.Context) error { return user.Remove(ctx, m.ID, "/etc/passwd", false) }, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			// A call that never answers (DELETE /proc did) fails here.
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			err := tt.op(ctx)
			if got, msg := status(err); got != tt.wantStatus {
				t.Errorf("got %v (status %d %s), want status %d", err, got, msg, tt.wantStatus)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("answered after %v", d)
			}
		})
	}
	if got := run(t, m.ID, "sha256sum /etc/shadow"); got != shadow {
		t.Errorf("/etc/shadow changed")
	}
	run(t, m.ID, "test -c /dev/null && test -c /dev/zero && test -p /home/user/w/fifo && test -f /tmp/keep && test -f /etc/passwd")
	if got := run(t, m.ID, "cat /etc/hosts"); got != hosts {
		t.Errorf("/etc/hosts is now %q, was %q", got, hosts)
	}
	// What the user writes is the user's.
	if _, err := user.WriteFileBytes(ctx, m.ID, "/home/user/w/mine/new.txt", []byte("x"), 0); err != nil {
		t.Fatalf("user writes in its home: %v", err)
	}
	if got := strings.TrimSpace(run(t, m.ID, "stat -c %U /home/user/w/mine /home/user/w/mine/new.txt | sort -u")); got != "user" {
		t.Errorf("owners %q, want user", got)
	}

	t.Run("e2b", func(t *testing.T) { filesHardeningE2B(t, m.ID, shadow) })
}

// filesHardeningE2B makes the same calls through the E2B layer: /files
// with username, and the filesystem RPCs with the user in Basic auth.
func filesHardeningE2B(t *testing.T, machineID, shadow string) {
	sbx := strings.TrimPrefix(machineID, "mch_")
	base := "http://" + env.inst.E2BAddr
	req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/sandboxes/"+sbx, nil)
	req.Header.Set("X-API-Key", env.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var detail struct {
		EnvdAccessToken string `json:"envdAccessToken"`
	}
	json.NewDecoder(resp.Body).Decode(&detail)
	resp.Body.Close()
	if resp.StatusCode != 200 || detail.EnvdAccessToken == "" {
		t.Fatalf("GET /sandboxes/%s: %d, token %q", sbx, resp.StatusCode, detail.EnvdAccessToken)
	}
	call := func(method, path, contentType, body, user string) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		req.Header.Set("E2b-Sandbox-Id", sbx)
		req.Header.Set("X-Access-Token", detail.EnvdAccessToken)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if user != "" {
			req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	files := func(query string) string { return "/files?" + query }
	q := func(path, user string) string { return url.Values{"path": {path}, "username": {user}}.Encode() }
	tests := []struct {
		name                      string
		method, path, ctype, body string
		user                      string
		wantStatus                int
	}{
		{"GET /etc/shadow as user", "GET", files(q("/etc/shadow", "user")), "", "", "", 403},
		{"GET /etc/shadow by default (user)", "GET", files("path=/etc/shadow"), "", "", "", 403},
		{"POST through the planted link as user", "POST", files(q("/home/user/w/notes.txt", "user")), "application/octet-stream", "pwned\n", "", 403},
		{"POST through the planted link as root", "POST", files(q("/home/user/w/notes.txt", "root")), "application/octet-stream", "pwned\n", "", 403},
		{"POST /dev/null as root", "POST", files(q("/dev/null", "root")), "application/octet-stream", "x", "", 400},
		{"POST a FIFO", "POST", files(q("/home/user/w/fifo", "user")), "application/octet-stream", "x", "", 400},
		{"Remove /proc as root", "POST", "/filesystem.Filesystem/Remove", "application/json", `{"path":"/proc"}`, "root", 400},
		{"Remove /etc/passwd as user", "POST", "/filesystem.Filesystem/Remove", "application/json", `{"path":"/etc/passwd"}`, "user", 403},
		{"Stat in /root as user", "POST", "/filesystem.Filesystem/ListDir", "application/json", `{"path":"/root"}`, "user", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, body := call(tt.method, tt.path, tt.ctype, tt.body, tt.user)
			if got != tt.wantStatus {
				t.Errorf("got %d %s, want %d", got, body, tt.wantStatus)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("answered after %v", d)
			}
		})
	}
	if got := run(t, machineID, "sha256sum /etc/shadow"); got != shadow {
		t.Errorf("/etc/shadow changed through the E2B layer")
	}
	run(t, machineID, "test -c /dev/null && test -p /home/user/w/fifo && test -f /etc/passwd")
}
