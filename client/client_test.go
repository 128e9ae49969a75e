package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"nullspace.dev/nullspace/api"
)

// recorded is what the fake server saw of one request.
type recorded struct {
	method, path, query, body, accept, auth, contentType string
}

// recorder is an httptest server that records the last request and answers
// with a canned status and body.
func recorder(t *testing.T, status int, body string) (*Client, *recorded) {
	t.Helper()
	var rec recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec = recorded{
			method: r.Method, path: r.URL.EscapedPath(), query: r.URL.RawQuery, body: string(b),
			accept: r.Header.Get("Accept"), auth: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type"),
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return New(srv.URL+"/", "key"), &rec
}

func TestRequests(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		respBody   string
		call       func(ctx context.Context, c *Client) error
		wantMethod string
		wantPath   string
		wantQuery  string
		wantBody   string
	}{
		{
			name: "create machine", status: 201, respBody: `{"id":"m1"}`,
			call: func(ctx context.Context, c *Client) error {
				m, err := c.CreateMachine(ctx, api.CreateMachineRequest{Template: "base", CPUCount: 1})
				if err == nil && m.ID != "m1" {
					err = fmt.Errorf("got id %q, want m1", m.ID)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines", wantBody: `{"template":"base","cpu_count":1}`,
		},
		{
			name: "get machine escapes id", respBody: `{"id":"a/b"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.GetMachine(ctx, "a/b")
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/a%2Fb",
		},
		{
			name: "kill machine", respBody: `{"id":"m1","state":"killed"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.KillMachine(ctx, "m1")
				return err
			},
			wantMethod: "DELETE", wantPath: "/v1/machines/m1",
		},
		{
			name: "run command forces foreground", respBody: `{"pid":3,"exit_code":0}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.RunCommand(ctx, "m1", api.RunCommandRequest{Cmd: []string{"ls"}, Background: true, Stream: true})
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/commands", wantBody: `{"cmd":["ls"]}`,
		},
		{
			name: "start command", status: 202, respBody: `{"pid":42}`,
			call: func(ctx context.Context, c *Client) error {
				pid, err := c.StartCommand(ctx, "m1", api.RunCommandRequest{Shell: "sleep 1"})
				if err == nil && pid != 42 {
					err = fmt.Errorf("got pid %d, want 42", pid)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/commands", wantBody: `{"shell":"sleep 1","background":true}`,
		},
		{
			name: "stream output", respBody: `{"type":"exit","exit_code":0}` + "\n",
			call: func(ctx context.Context, c *Client) error {
				s, err := c.StreamOutput(ctx, "m1", 7, StreamOutputOptions{Follow: true, StdoutOffset: 10})
				if err != nil {
					return err
				}
				return s.Close()
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/commands/7/output", wantQuery: "follow=true&stdout_offset=10",
		},
		{
			name: "live output", respBody: `{"type":"exit","exit_code":0}` + "\n",
			call: func(ctx context.Context, c *Client) error {
				s, err := c.StreamOutput(ctx, "m1", 7, StreamOutputOptions{Follow: true, Live: true})
				if err != nil {
					return err
				}
				return s.Close()
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/commands/7/output", wantQuery: "follow=true&live=true",
		},
		{
			name: "stdin", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.SendStdin(ctx, "m1", 7, "hi\n", true) },
			wantMethod: "POST", wantPath: "/v1/machines/m1/commands/7/stdin", wantBody: `{"data":"hi\n","close":true}`,
		},
		{
			name: "signal", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.Signal(ctx, "m1", 7, "SIGTERM") },
			wantMethod: "POST", wantPath: "/v1/machines/m1/commands/7/signal", wantBody: `{"signal":"SIGTERM"}`,
		},
		{
			name: "kill process", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.KillProcess(ctx, "m1", 7) },
			wantMethod: "DELETE", wantPath: "/v1/machines/m1/commands/7",
		},
		{
			name: "write file", respBody: `{"path":"/a b","size":3}`,
			call: func(ctx context.Context, c *Client) error {
				res, err := c.WriteFileBytes(ctx, "m1", "/a b", []byte("abc"), 0o600)
				if err == nil && res.Size != 3 {
					err = fmt.Errorf("got size %d, want 3", res.Size)
				}
				return err
			},
			wantMethod: "PUT", wantPath: "/v1/machines/m1/files", wantQuery: "mode=0600&path=%2Fa+b", wantBody: "abc",
		},
		{
			name: "write file with metadata", respBody: `{"path":"/f","size":1,"metadata":{"author":"mish"}}`,
			call: func(ctx context.Context, c *Client) error {
				res, err := c.WriteFileWith(ctx, "m1", "/f", strings.NewReader("x"), WriteOptions{Metadata: map[string]string{"author": "mish"}})
				if err == nil && res.Metadata["author"] != "mish" {
					err = fmt.Errorf("got metadata %v, want author=mish", res.Metadata)
				}
				return err
			},
			wantMethod: "PUT", wantPath: "/v1/machines/m1/files", wantQuery: "metadata%5Bauthor%5D=mish&path=%2Ff", wantBody: "x",
		},
		{
			name: "read file", respBody: "\x00\x01raw",
			call: func(ctx context.Context, c *Client) error {
				b, err := c.ReadFileBytes(ctx, "m1", "/bin/x")
				if err == nil && string(b) != "\x00\x01raw" {
					err = fmt.Errorf("got %q, want raw bytes", b)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/files", wantQuery: "path=%2Fbin%2Fx",
		},
		{
			name: "remove recursive", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.Remove(ctx, "m1", "/d", true) },
			wantMethod: "DELETE", wantPath: "/v1/machines/m1/files", wantQuery: "path=%2Fd&recursive=true",
		},
		{
			name: "list files", respBody: `{"entries":[{"name":"a"}]}`,
			call: func(ctx context.Context, c *Client) error {
				es, err := c.ListFiles(ctx, "m1", "/", 2)
				if err == nil && len(es) != 1 {
					err = fmt.Errorf("got %d entries, want 1", len(es))
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/files/list", wantQuery: "depth=2&path=%2F",
		},
		{
			name: "rename", respBody: `{"path":"/b"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Rename(ctx, "m1", "/a", "/b")
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/files/rename", wantBody: `{"from":"/a","to":"/b"}`,
		},
		{
			name: "build template", status: 201, respBody: `{"name":"t","state":"ready"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.BuildTemplate(ctx, api.BuildTemplateRequest{Name: "t", FromTemplate: "base", Steps: []string{"true"}})
				return err
			},
			wantMethod: "POST", wantPath: "/v1/templates", wantBody: `{"name":"t","from_template":"base","steps":["true"]}`,
		},
		{
			name: "delete template", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.DeleteTemplate(ctx, "t") },
			wantMethod: "DELETE", wantPath: "/v1/templates/t",
		},
		{
			name: "pause", respBody: `{"id":"snp_1","kind":"hibernate"}`,
			call: func(ctx context.Context, c *Client) error {
				s, err := c.Pause(ctx, "m1")
				if err == nil && (s.ID != "snp_1" || s.Kind != api.SnapshotHibernate) {
					err = fmt.Errorf("got snapshot %+v, want snp_1 hibernate", s)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/pause",
		},
		{
			name: "resume", status: 201, respBody: `{"id":"m2","lineage_id":"m1"}`,
			call: func(ctx context.Context, c *Client) error {
				m, err := c.Resume(ctx, "snp_1")
				if err == nil && (m.ID != "m2" || m.LineageID != "m1") {
					err = fmt.Errorf("got machine %+v, want m2 of lineage m1", m)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/snapshots/snp_1/resume",
		},
		{
			name: "connect", respBody: `{"id":"m2","latest_id":"m2"}`,
			call: func(ctx context.Context, c *Client) error {
				m, err := c.Connect(ctx, "m1")
				if err == nil && m.ID != "m2" {
					err = fmt.Errorf("got id %q, want m2", m.ID)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/connect",
		},
		{
			name: "stop with the server's grace sends no body", respBody: `{"id":"m1","state":"stopped","snapshot_id":"snp_d"}`,
			call: func(ctx context.Context, c *Client) error {
				m, err := c.Stop(ctx, "m1", nil)
				if err == nil && (m.State != api.StateStopped || m.SnapshotID != "snp_d") {
					err = fmt.Errorf("got machine %+v, want stopped on snp_d", m)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/stop",
		},
		{
			name: "stop with a grace", respBody: `{"id":"m1","state":"stopped"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Stop(ctx, "m1", durp(2500*time.Millisecond))
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/stop", wantBody: `{"grace_ms":2500}`,
		},
		{
			// 0 is a value (kill at once), not "unset": it must be sent.
			name: "stop with no grace kills at once", respBody: `{"id":"m1","state":"stopped"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Stop(ctx, "m1", durp(0))
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/stop", wantBody: `{"grace_ms":0}`,
		},
		{
			name: "stop rounds a sub-millisecond grace up", respBody: `{"id":"m1","state":"stopped"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Stop(ctx, "m1", durp(time.Microsecond))
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/stop", wantBody: `{"grace_ms":1}`,
		},
		{
			name: "start", respBody: `{"id":"m1","state":"running","command":["sleep","9"],"main_pid":12}`,
			call: func(ctx context.Context, c *Client) error {
				m, err := c.Start(ctx, "m1")
				if err == nil && (m.State != api.StateRunning || m.MainPID != 12 || len(m.Command) != 2) {
					err = fmt.Errorf("got machine %+v, want running with main pid 12", m)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/start",
		},
		{
			name: "wait without a timeout", respBody: `{"exit_code":143,"signal":"SIGTERM","at":"2025-06-01T12:00:00Z"}`,
			call: func(ctx context.Context, c *Client) error {
				e, err := c.Wait(ctx, "m/1", 0)
				want := api.MainExit{ExitCode: 143, Signal: "SIGTERM", At: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
				if err == nil && *e != want {
					err = fmt.Errorf("got exit %+v, want %+v", *e, want)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/m%2F1/wait",
		},
		{
			name: "wait with a timeout", respBody: `{"exit_code":0,"at":"2025-06-01T12:00:00Z"}`,
			call: func(ctx context.Context, c *Client) error {
				e, err := c.Wait(ctx, "m1", 90*time.Second)
				if err == nil && (e.ExitCode != 0 || e.Signal != "") {
					err = fmt.Errorf("got exit %+v, want a clean exit", *e)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/wait", wantQuery: "timeout_ms=90000",
		},
		{
			// timeout_ms=0 is refused by the server; a tiny timeout is 1 ms.
			name: "wait rounds a sub-millisecond timeout up", respBody: `{"exit_code":0,"at":"2025-06-01T12:00:00Z"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Wait(ctx, "m1", time.Nanosecond)
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/wait", wantQuery: "timeout_ms=1",
		},
		{
			name: "create snapshot", status: 201, respBody: `{"id":"snp_2","kind":"snapshot","pause_window_ms":12}`,
			call: func(ctx context.Context, c *Client) error {
				s, err := c.CreateSnapshot(ctx, "m1")
				if err == nil && s.PauseWindowMS != 12 {
					err = fmt.Errorf("got pause window %d, want 12", s.PauseWindowMS)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/snapshots",
		},
		{
			name: "create named snapshot", status: 201, respBody: `{"id":"snp_2","kind":"snapshot","name":"web"}`,
			call: func(ctx context.Context, c *Client) error {
				s, err := c.CreateSnapshotWith(ctx, "m1", api.CreateSnapshotRequest{Name: "web"})
				if err == nil && s.Name != "web" {
					err = fmt.Errorf("got name %q, want web", s.Name)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/snapshots", wantBody: `{"name":"web"}`,
		},
		{
			name: "list snapshots by name", respBody: `{"snapshots":[{"id":"snp_1","name":"web"}]}`,
			call: func(ctx context.Context, c *Client) error {
				ss, err := c.ListSnapshotsWhere(ctx, SnapshotFilter{Name: "web"})
				if err == nil && (len(ss) != 1 || ss[0].Name != "web") {
					err = fmt.Errorf("got %+v, want snp_1 named web", ss)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/snapshots", wantQuery: "name=web",
		},
		{
			name: "fork", status: 201, respBody: `{"snapshot":{"id":"snp_3"},"machines":[{"id":"c1"},{"id":"c2"}]}`,
			call: func(ctx context.Context, c *Client) error {
				r, err := c.Fork(ctx, "m1", 2)
				if err == nil && (r.Snapshot.ID != "snp_3" || len(r.Machines) != 2) {
					err = fmt.Errorf("got %+v, want snp_3 with 2 machines", r)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/fork", wantBody: `{"count":2}`,
		},
		{
			name: "fork with the default count sends no body", status: 201, respBody: `{"snapshot":{"id":"snp_3"},"machines":[]}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Fork(ctx, "m1", 0)
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/fork",
		},
		{
			name: "checkpoints", respBody: `{"snapshots":[{"id":"snp_1","generation":1},{"id":"snp_4","generation":2}]}`,
			call: func(ctx context.Context, c *Client) error {
				ss, err := c.Checkpoints(ctx, "m1")
				if err == nil && (len(ss) != 2 || ss[1].Generation != 2) {
					err = fmt.Errorf("got %+v, want 2 snapshots", ss)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/machines/m1/checkpoints",
		},
		{
			name: "checkpoint", status: 201, respBody: `{"id":"snp_4","kind":"checkpoint"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Checkpoint(ctx, "m1")
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m1/checkpoints",
		},
		{
			name: "restore checkpoint escapes both ids", respBody: `{"id":"m2","restored_from":"snp/4"}`,
			call: func(ctx context.Context, c *Client) error {
				m, err := c.RestoreCheckpoint(ctx, "m/2", "snp/4")
				if err == nil && m.RestoredFrom != "snp/4" {
					err = fmt.Errorf("got restored_from %q, want snp/4", m.RestoredFrom)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/machines/m%2F2/checkpoints/snp%2F4/restore",
		},
		{
			name: "list snapshots with filters", respBody: `{"snapshots":[{"id":"snp_1"}]}`,
			call: func(ctx context.Context, c *Client) error {
				ss, err := c.ListSnapshots(ctx, "m1", api.SnapshotCheckpoint)
				if err == nil && len(ss) != 1 {
					err = fmt.Errorf("got %d snapshots, want 1", len(ss))
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/snapshots", wantQuery: "kind=checkpoint&machine_id=m1",
		},
		{
			name: "list snapshots without filters", respBody: `{"snapshots":[]}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.ListSnapshots(ctx, "", "")
				return err
			},
			wantMethod: "GET", wantPath: "/v1/snapshots",
		},
		{
			name: "get snapshot", respBody: `{"id":"snp_1"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.GetSnapshot(ctx, "snp_1")
				return err
			},
			wantMethod: "GET", wantPath: "/v1/snapshots/snp_1",
		},
		{
			name: "delete snapshot", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.DeleteSnapshot(ctx, "snp_1", false) },
			wantMethod: "DELETE", wantPath: "/v1/snapshots/snp_1",
		},
		{
			name: "delete snapshot forced", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.DeleteSnapshot(ctx, "snp_1", true) },
			wantMethod: "DELETE", wantPath: "/v1/snapshots/snp_1", wantQuery: "force=true",
		},
		{
			name: "create volume", status: 201, respBody: `{"name":"data"}`,
			call: func(ctx context.Context, c *Client) error {
				v, err := c.CreateVolume(ctx, "data")
				if err == nil && v.Name != "data" {
					err = fmt.Errorf("got volume %q, want data", v.Name)
				}
				return err
			},
			wantMethod: "POST", wantPath: "/v1/volumes", wantBody: `{"name":"data"}`,
		},
		{
			name: "list volumes", respBody: `{"volumes":[{"name":"data","machines":2}]}`,
			call: func(ctx context.Context, c *Client) error {
				vs, err := c.ListVolumes(ctx)
				if err == nil && (len(vs) != 1 || vs[0].Machines != 2) {
					err = fmt.Errorf("got %+v, want one volume used by 2 machines", vs)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/volumes",
		},
		{
			name: "delete volume", status: 204,
			call:       func(ctx context.Context, c *Client) error { return c.DeleteVolume(ctx, "data") },
			wantMethod: "DELETE", wantPath: "/v1/volumes/data",
		},
		{
			name: "health", respBody: `{"ok":true,"version":"v1"}`,
			call: func(ctx context.Context, c *Client) error {
				h, err := c.Health(ctx)
				if err == nil && (!h.OK || h.Version != "v1") {
					err = fmt.Errorf("got %+v, want ok v1", h)
				}
				return err
			},
			wantMethod: "GET", wantPath: "/v1/health",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status := tt.status
			if status == 0 {
				status = 200
			}
			c, rec := recorder(t, status, tt.respBody)
			if err := tt.call(t.Context(), c); err != nil {
				t.Fatalf("call: %v", err)
			}
			got := recorded{method: rec.method, path: rec.path, query: rec.query, body: rec.body}
			want := recorded{method: tt.wantMethod, path: tt.wantPath, query: tt.wantQuery, body: tt.wantBody}
			if got != want {
				t.Errorf("got request %+v, want %+v", got, want)
			}
			if rec.auth != "Bearer key" {
				t.Errorf("got Authorization %q, want %q", rec.auth, "Bearer key")
			}
		})
	}
}

func TestListMachinesQuery(t *testing.T) {
	tests := []struct {
		name string
		opts ListOptions
		want string
	}{
		{"none", ListOptions{}, ""},
		{"state", ListOptions{State: "running"}, "state=running"},
		{"metadata sorted and repeated", ListOptions{Metadata: map[string]string{"b": "2", "a": "x=y"}}, "metadata=a%3Dx%3Dy&metadata=b%3D2"},
		{"both", ListOptions{State: "killed", Metadata: map[string]string{"owner": "me too"}}, "metadata=owner%3Dme+too&state=killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rec := recorder(t, 200, `{"machines":[{"id":"m1"},{"id":"m2"}]}`)
			ms, err := c.ListMachines(t.Context(), tt.opts)
			if err != nil {
				t.Fatalf("ListMachines: %v", err)
			}
			if len(ms) != 2 {
				t.Errorf("got %d machines, want 2", len(ms))
			}
			if rec.query != tt.want {
				t.Errorf("got query %q, want %q", rec.query, tt.want)
			}
		})
	}
}

func TestAPIError(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		want       APIError
		wantString string
	}{
		{
			name:   "api error",
			status: 404,
			body:   `{"code":"machine_not_found","message":"machine m1 not found","retryable":false,"suggested_action":"list machines with GET /v1/machines"}`,
			want: APIError{Status: 404, Code: "machine_not_found", Message: "machine m1 not found",
				SuggestedAction: "list machines with GET /v1/machines"},
			wantString: "machine m1 not found (machine_not_found); list machines with GET /v1/machines",
		},
		{
			name:       "retryable without action",
			status:     503,
			body:       `{"code":"unavailable","message":"unavailable","retryable":true}`,
			want:       APIError{Status: 503, Code: "unavailable", Message: "unavailable", Retryable: true},
			wantString: "unavailable (unavailable)",
		},
		{
			name:       "html from a proxy",
			status:     502,
			body:       "<html>bad gateway</html>",
			want:       APIError{Status: 502, Message: "server answered 502 Bad Gateway", Retryable: true},
			wantString: "server answered 502 Bad Gateway",
		},
		{
			name:       "plain text",
			status:     400,
			body:       "bad request\n",
			want:       APIError{Status: 400, Message: "server answered 400 Bad Request: bad request"},
			wantString: "server answered 400 Bad Request: bad request",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := recorder(t, tt.status, tt.body)
			_, err := c.GetMachine(t.Context(), "m1")
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("got error %v (%T), want *APIError", err, err)
			}
			if *ae != tt.want {
				t.Errorf("got %+v, want %+v", *ae, tt.want)
			}
			if got := err.Error(); got != tt.wantString {
				t.Errorf("got Error() %q, want %q", got, tt.wantString)
			}
			wrapped := fmt.Errorf("get machine: %w", err)
			if tt.want.Code != "" && !IsCode(wrapped, tt.want.Code) {
				t.Errorf("got IsCode(wrapped, %q) false, want true", tt.want.Code)
			}
			if IsCode(err, "other_code") {
				t.Errorf("got IsCode(err, other_code) true, want false")
			}
		})
	}
}

// TestSnapshotErrors checks the errors callers branch on around hibernate,
// stop and wait arrive with their code, status and retryability.
func TestSnapshotErrors(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		body          string
		call          func(ctx context.Context, c *Client) error
		wantCode      string
		wantRetryable bool
	}{
		{
			name: "disk full on pause", status: 507,
			body: `{"code":"resource_exhausted","message":"no space left on the snapshot disk","retryable":true}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Pause(ctx, "m1")
				return err
			},
			wantCode: "resource_exhausted", wantRetryable: true,
		},
		{
			name: "superseded resume", status: 409,
			body: `{"code":"snapshot_superseded","message":"snapshot snp_1 is not the latest state of machine m1"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Resume(ctx, "snp_1")
				return err
			},
			wantCode: "snapshot_superseded",
		},
		{
			name: "busy lineage", status: 409,
			body: `{"code":"conflict","message":"machine m1 is in the middle of another lifecycle operation","retryable":true}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.CreateSnapshot(ctx, "m1")
				return err
			},
			wantCode: "conflict", wantRetryable: true,
		},
		{
			name: "snapshot in use", status: 409,
			body:     `{"code":"snapshot_in_use","message":"snapshot snp_1 is in use"}`,
			call:     func(ctx context.Context, c *Client) error { return c.DeleteSnapshot(ctx, "snp_1", false) },
			wantCode: "snapshot_in_use",
		},
		{
			name: "stop of an ephemeral machine", status: 409,
			body: `{"code":"machine_ephemeral","message":"machine m1 is ephemeral"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Stop(ctx, "m1", nil)
				return err
			},
			wantCode: "machine_ephemeral",
		},
		{
			name: "start of a machine that is not stopped", status: 409,
			body: `{"code":"machine_not_running","message":"machine m1 is paused"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Start(ctx, "m1")
				return err
			},
			wantCode: "machine_not_running",
		},
		{
			name: "wait past its timeout", status: 504,
			body: `{"code":"deadline_exceeded","message":"the main process of machine m1 was still running after 10 ms","retryable":true}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Wait(ctx, "m1", 10*time.Millisecond)
				return err
			},
			wantCode: "deadline_exceeded", wantRetryable: true,
		},
		{
			name: "wait without a main process", status: 409,
			body: `{"code":"machine_has_no_command","message":"machine m1 has no main process"}`,
			call: func(ctx context.Context, c *Client) error {
				_, err := c.Wait(ctx, "m1", 0)
				return err
			},
			wantCode: "machine_has_no_command",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := recorder(t, tt.status, tt.body)
			err := tt.call(t.Context(), c)
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("got error %v (%T), want *APIError", err, err)
			}
			if ae.Status != tt.status || ae.Code != tt.wantCode || ae.Retryable != tt.wantRetryable {
				t.Errorf("got status %d code %q retryable %v, want %d %q %v",
					ae.Status, ae.Code, ae.Retryable, tt.status, tt.wantCode, tt.wantRetryable)
			}
		})
	}
}

func TestIsCodeNonAPIError(t *testing.T) {
	if IsCode(errors.New("machine_not_found"), "machine_not_found") {
		t.Errorf("got IsCode true for a plain error, want false")
	}
	if IsCode(nil, "") {
		t.Errorf("got IsCode(nil) true, want false")
	}
}

func intp(n int) *int { return &n }

func durp(d time.Duration) *time.Duration { return &d }

// streamEvents is an NDJSON stream with binary data and a UTF-8 sequence
// that chunking may split.
var streamEvents = []api.CommandEvent{
	{Type: api.EventStart, PID: 12},
	{Type: api.EventStdout, PID: 12, Data: []byte("héllo\n")},
	{Type: api.EventStderr, PID: 12, Data: []byte{0, 0xff, 0xfe, '\n'}, Offset: 0},
	{Type: api.EventStdout, PID: 12, Data: bytes.Repeat([]byte("x"), 5000), Offset: 7},
	{Type: api.EventExit, PID: 12, ExitCode: intp(3)},
}

func encodeNDJSON(t *testing.T, evs []api.CommandEvent) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, ev := range evs {
		if err := json.NewEncoder(&b).Encode(ev); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func TestStreamCommandChunks(t *testing.T) {
	payload := encodeNDJSON(t, streamEvents)
	for _, chunk := range []int{1, 3, 7, 64, len(payload)} {
		t.Run(fmt.Sprintf("chunk %d", chunk), func(t *testing.T) {
			var gotReq api.RunCommandRequest
			var gotAccept string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotAccept = r.Header.Get("Accept")
				json.NewDecoder(r.Body).Decode(&gotReq)
				w.Header().Set("Content-Type", "application/x-ndjson")
				for p := payload; len(p) > 0; {
					n := min(chunk, len(p))
					w.Write(p[:n])
					w.(http.Flusher).Flush()
					p = p[n:]
				}
			}))
			defer srv.Close()

			s, err := New(srv.URL, "k").StreamCommand(t.Context(), "m1", api.RunCommandRequest{Cmd: []string{"x"}})
			if err != nil {
				t.Fatalf("StreamCommand: %v", err)
			}
			var got []api.CommandEvent
			for ev, err := range s.All() {
				if err != nil {
					t.Fatalf("stream: %v", err)
				}
				got = append(got, ev)
			}
			if !reflect.DeepEqual(got, streamEvents) {
				t.Errorf("got events %+v, want %+v", got, streamEvents)
			}
			if gotAccept != "application/x-ndjson" {
				t.Errorf("got Accept %q, want application/x-ndjson", gotAccept)
			}
			if !gotReq.Stream || gotReq.Background {
				t.Errorf("got stream=%v background=%v, want stream=true background=false", gotReq.Stream, gotReq.Background)
			}
		})
	}
}

func TestEventStreamErrors(t *testing.T) {
	full := encodeNDJSON(t, streamEvents[:2])
	errEvent := `{"type":"error","error":{"code":"agent_unavailable","message":"agent went away","retryable":true}}` + "\n"
	tests := []struct {
		name       string
		body       string
		wantEvents int
		wantErr    func(error) bool
	}{
		{"clean end", string(full), 2, func(err error) bool { return errors.Is(err, io.EOF) }},
		{"cut inside an event", string(full[:len(full)-5]), 1, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"garbage", string(full) + "not json\n", 2, func(err error) bool {
			var se *json.SyntaxError
			return errors.As(err, &se)
		}},
		{"error event", string(full) + errEvent + string(full), 2, func(err error) bool {
			var ae *APIError
			return errors.As(err, &ae) && ae.Code == "agent_unavailable" && ae.Retryable && ae.Status == 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newEventStream(io.NopCloser(iotest.HalfReader(strings.NewReader(tt.body))))
			n := 0
			var err error
			for {
				var ev api.CommandEvent
				ev, err = s.Next()
				if err != nil {
					if tt.name == "error event" && ev.Type != api.EventError {
						t.Errorf("got event type %q with the error, want %q", ev.Type, api.EventError)
					}
					break
				}
				n++
			}
			if n != tt.wantEvents {
				t.Errorf("got %d events, want %d", n, tt.wantEvents)
			}
			if !tt.wantErr(err) {
				t.Errorf("got error %v (%T), not the one wanted", err, err)
			}
			if _, again := s.Next(); again != err {
				t.Errorf("got %v on the next call, want the same error %v", again, err)
			}
		})
	}
}

func TestEventStreamAllStopsEarly(t *testing.T) {
	closed := false
	body := readCloser{Reader: bytes.NewReader(encodeNDJSON(t, streamEvents)), close: func() { closed = true }}
	s := newEventStream(body)
	n := 0
	for range s.All() {
		n++
		if n == 2 {
			break
		}
	}
	if n != 2 {
		t.Errorf("got %d events, want 2", n)
	}
	if !closed {
		t.Errorf("got stream open after break, want closed")
	}
}

type readCloser struct {
	io.Reader
	close func()
}

func (r readCloser) Close() error { r.close(); return nil }

func TestStreamRejectsSSE(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {}\n\n")
	}))
	defer srv.Close()
	_, err := New(srv.URL, "").StreamOutput(t.Context(), "m1", 1, StreamOutputOptions{})
	if err == nil || !strings.Contains(err.Error(), "text/event-stream") {
		t.Errorf("got error %v, want one naming text/event-stream", err)
	}
}

func TestKeyFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		envKey  string
		file    string // content of <data dir>/api-key; "" for none
		fileDir bool   // make api-key a directory, so reading it fails
		want    string
		wantErr bool
	}{
		{name: "env wins over file", envKey: "from-env", file: "from-file", want: "from-env"},
		{name: "file fallback, trimmed", file: "from-file\n", want: "from-file"},
		{name: "no key anywhere", want: ""},
		{name: "unreadable key file", fileDir: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv(EnvDataDir, dir)
			t.Setenv(EnvAPIKey, tt.envKey)
			path := filepath.Join(dir, KeyFileName)
			if tt.file != "" {
				if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tt.fileDir {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			got, err := KeyFromEnv()
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got key %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFromEnv(t *testing.T) {
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		io.WriteString(w, `{"templates":[]}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, KeyFileName), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvAPIURL, srv.URL)
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvDataDir, dir)

	c, err := FromEnv()
	if err != nil {
		t.Fatalf("FromEnv: %v", err)
	}
	if _, err := c.ListTemplates(t.Context()); err != nil {
		t.Fatalf("ListTemplates: %v", err)
	}
	if gotAuth != "Bearer secret" {
		t.Errorf("got Authorization %q, want %q", gotAuth, "Bearer secret")
	}

	t.Setenv(EnvAPIURL, "")
	if got := URLFromEnv(); got != DefaultAPIURL {
		t.Errorf("got URL %q, want %q", got, DefaultAPIURL)
	}
}

// TestListMachinesPages: ListMachines follows next_token to the last page,
// with the same filters on every request.
func TestListMachinesPages(t *testing.T) {
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries = append(queries, r.URL.RawQuery)
		switch r.URL.Query().Get("next_token") {
		case "":
			io.WriteString(w, `{"machines":[{"id":"m1"},{"id":"m2"}],"next_token":"p2"}`)
		case "p2":
			io.WriteString(w, `{"machines":[{"id":"m3"}],"next_token":""}`)
		default:
			w.WriteHeader(400)
			io.WriteString(w, `{"code":"invalid_argument","message":"bad token"}`)
		}
	}))
	t.Cleanup(srv.Close)
	c := New(srv.URL, "key")
	ms, err := c.ListMachines(t.Context(), ListOptions{State: "running", IncludeAliases: true, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[2].ID != "m3" {
		t.Fatalf("got %v, want m1 m2 m3", ms)
	}
	want := []string{"include_aliases=true&limit=2&state=running", "include_aliases=true&limit=2&next_token=p2&state=running"}
	if len(queries) != 2 || queries[0] != want[0] || queries[1] != want[1] {
		t.Fatalf("queries %q, want %q", queries, want)
	}
}

// TestListVolumesPages: the lists without filters read every page too.
func TestListVolumesPages(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("next_token") == "" {
			io.WriteString(w, `{"volumes":[{"name":"a"}],"next_token":"n"}`)
			return
		}
		io.WriteString(w, `{"volumes":[{"name":"b"}],"next_token":""}`)
	}))
	t.Cleanup(srv.Close)
	vs, err := New(srv.URL, "key").ListVolumes(t.Context())
	if err != nil || len(vs) != 2 || vs[1].Name != "b" {
		t.Fatalf("ListVolumes: %v %v, want a, b", vs, err)
	}
}
