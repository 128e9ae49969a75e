package httpapi

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/telemetry"
	"nullspace.dev/nullspace/internal/template"
)

// storeBuilder builds with a real template store, without steps.
type storeBuilder struct{ s *template.Store }

func (b storeBuilder) Build(ctx context.Context, team string, req api.BuildTemplateRequest) (api.Template, error) {
	return b.s.Build(ctx, team, req, nil)
}

func (b storeBuilder) BuildUpload(ctx context.Context, team string, req api.BuildTemplateRequest, tarball io.Reader) (api.Template, error) {
	return b.s.BuildUpload(ctx, team, req, tarball, nil)
}

type oneKey struct{}

func (oneKey) Authenticate(_ context.Context, key string) (*access.Principal, error) {
	if key != "key" {
		return nil, errdefs.ErrUnauthenticated
	}
	return &access.Principal{TeamID: "team", Scopes: access.Scopes{access.Operator}}, nil
}

func newTemplateServer(t *testing.T, maxUpload int64) (*httptest.Server, *template.Store) {
	t.Helper()
	return newTemplateServerIn(t, t.TempDir(), maxUpload)
}

// newTemplateServerIn is newTemplateServer with its templates in dir.
func newTemplateServerIn(t *testing.T, dir string, maxUpload int64) (*httptest.Server, *template.Store) {
	t.Helper()
	store, err := template.Open(dir, slog.New(slog.DiscardHandler), template.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil, store, storeBuilder{store}, oneKey{}, nil, telemetry.New(nil), nil, slog.New(slog.DiscardHandler), "test").
		WithTemplateUploadLimit(maxUpload)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv, store
}

func rootfsTarGz(t *testing.T, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range names {
		body := "content of " + n
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// multipartBody is a build upload: the parts in order, each a name and its
// content.
func multipartBody(t *testing.T, parts ...[2]string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		w, err := mw.CreateFormFile(p[0], p[0])
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, p[1])
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

func postTemplate(t *testing.T, url, contentType string, body io.Reader, length int64) (int, api.Error, api.Template) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", url+"/v1/templates", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = length
	req.Header.Set("Authorization", "Bearer key")
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	var tmpl api.Template
	if resp.StatusCode >= 300 {
		json.Unmarshal(b, &e)
	} else {
		json.Unmarshal(b, &tmpl)
	}
	return resp.StatusCode, e, tmpl
}

func TestUploadTemplate(t *testing.T) {
	srv, store := newTemplateServer(t, 64<<10)
	ct, body := multipartBody(t, [2]string{"request", `{"name":"up","workdir":"/w","env":{"A":"1"}}`},
		[2]string{"tarball", string(rootfsTarGz(t, "bin/sh", "etc/os-release"))})
	status, e, tmpl := postTemplate(t, srv.URL, ct, bytes.NewReader(body), int64(len(body)))
	if status != 201 || tmpl.State != api.TemplateReady || tmpl.Source != "upload" || tmpl.Env["A"] != "1" {
		t.Fatalf("upload = %d %+v %+v, want 201 and a ready template", status, e, tmpl)
	}
	rootfs, err := store.RootfsDir("up")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs, "etc/os-release")); string(b) != "content of etc/os-release" {
		t.Errorf("etc/os-release = %q, %v", b, err)
	}

	// Entries that leave the root: a failed template that says so.
	ct, body = multipartBody(t, [2]string{"request", `{"name":"evil"}`},
		[2]string{"tarball", string(rootfsTarGz(t, "bin/sh", "../../etc/cron.d/x"))})
	status, _, tmpl = postTemplate(t, srv.URL, ct, bytes.NewReader(body), int64(len(body)))
	if status != 201 || tmpl.State != api.TemplateFailed || !strings.Contains(tmpl.Error, `".."`) {
		t.Errorf("upload with .. = %d %+v, want a failed template naming the entry", status, tmpl)
	}

	// A valid tarball over the limit: plain, one 128 KiB file.
	var bigTar bytes.Buffer
	tw := tar.NewWriter(&bigTar)
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 128 << 10})
	tw.Write(make([]byte, 128<<10))
	tw.Close()
	big := bigTar.String()
	for _, tc := range []struct {
		name   string
		parts  [][2]string
		length func(n int) int64 // the Content-Length sent; -1: chunked
		status int
		code   string
	}{
		{"too large by length", [][2]string{{"request", `{"name":"big1"}`}, {"tarball", big}}, func(n int) int64 { return int64(n) }, 413, errdefs.CodeFileTooLarge},
		{"too large chunked", [][2]string{{"request", `{"name":"big2"}`}, {"tarball", big}}, func(int) int64 { return -1 }, 413, errdefs.CodeFileTooLarge},
		{"no request part", [][2]string{{"tarball", "x"}}, func(n int) int64 { return int64(n) }, 400, errdefs.CodeInvalidArgument},
		{"no tarball", [][2]string{{"request", `{"name":"x"}`}}, func(n int) int64 { return int64(n) }, 400, errdefs.CodeInvalidArgument},
		{"source named too", [][2]string{{"request", `{"name":"x","from_dir":"/etc"}`}, {"tarball", "x"}}, func(n int) int64 { return int64(n) }, 400, errdefs.CodeInvalidArgument},
		{"bad json", [][2]string{{"request", `{"name":`}, {"tarball", "x"}}, func(n int) int64 { return int64(n) }, 400, errdefs.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct, body := multipartBody(t, tc.parts...)
			var r io.Reader = bytes.NewReader(body)
			if tc.length(len(body)) < 0 {
				r = io.MultiReader(r) // hides the length: sent chunked
			}
			status, e, _ := postTemplate(t, srv.URL, ct, r, tc.length(len(body)))
			if status != tc.status || e.Code != tc.code || e.SuggestedAction == "" {
				t.Errorf("got %d %+v, want %d %s with a suggested action", status, e, tc.status, tc.code)
			}
		})
	}
	if list, _ := store.List(t.Context()); len(list) != 2 {
		t.Errorf("templates after the refused uploads: %+v, want up and evil only", list)
	}

	// A host path: refused, naming the flag.
	status, e, _ = postTemplate(t, srv.URL, "application/json", strings.NewReader(`{"name":"host","from_tarball":"/etc/shadow.tar"}`), -1)
	if status != 403 || e.Code != errdefs.CodePermissionDenied || !strings.Contains(e.SuggestedAction, "--template-source-dir") {
		t.Errorf("host path = %d %+v, want 403 permission_denied naming --template-source-dir", status, e)
	}
}
