package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestTemplateBuild builds templates from a template, a directory and a
// tarball with build steps run inside a machine, boots machines from them,
// and checks failures and deletion rules.
func TestTemplateBuild(t *testing.T) {
	ctx := t.Context()
	c := env.client
	minimal, err := c.GetTemplate(ctx, "minimal")
	if err != nil || minimal.State != api.TemplateReady {
		t.Fatalf("minimal template: %+v, %v", minimal, err)
	}
	// Host paths of builds lie in the server's --template-source-dir.
	src, err := os.MkdirTemp(templateSourceDir(), "build-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(src) })
	rootfs := filepath.Join(env.cfg.TemplatesDir, "minimal", "rootfs")
	// A directory source: a copy of minimal's rootfs with a marker file.
	dirSrc := filepath.Join(src, "rootfs")
	if err := copyTree(rootfs, dirSrc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirSrc, "from-dir"), []byte("dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(src, "rootfs.tar")
	if out, err := execOut("tar", "-C", dirSrc, "-cf", tarball, "."); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}

	tests := []struct {
		name string
		req  api.BuildTemplateRequest
		file string // a file the built template must have
		want string
	}{
		{"from template", api.BuildTemplateRequest{FromTemplate: "minimal",
			Steps: []string{"echo built > /etc/built-by-step", "mkdir -p /opt/tool && echo 1 > /opt/tool/v"}},
			"/etc/built-by-step", "built\n"},
		{"from dir", api.BuildTemplateRequest{FromDir: dirSrc, Steps: []string{"cp /from-dir /workspace/copied"}},
			"/workspace/copied", "dir\n"},
		{"from tarball", api.BuildTemplateRequest{FromTarball: tarball, Workdir: "/opt", Env: map[string]string{"GREETING": "hi"}},
			"/from-dir", "dir\n"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Name = "e2e-built-" + string(rune('a'+i))
			c.DeleteTemplate(ctx, tt.req.Name)
			tmpl, err := c.BuildTemplate(ctx, tt.req)
			if err != nil || tmpl.State != api.TemplateReady {
				t.Fatalf("build: %+v, %v", tmpl, err)
			}
			t.Cleanup(func() { c.DeleteTemplate(ctx, tt.req.Name) })
			m := newMachine(t, api.CreateMachineRequest{Template: tt.req.Name})
			got, err := c.ReadFileBytes(ctx, m.ID, tt.file)
			if err != nil || string(got) != tt.want {
				t.Fatalf("%s in a machine of the built template = %q, %v; want %q", tt.file, got, err, tt.want)
			}
			if tt.req.Workdir != "" {
				if pwd := run(t, m.ID, "pwd; echo $GREETING"); pwd != tt.req.Workdir+"\nhi\n" {
					t.Errorf("workdir and env = %q, want %s and hi", pwd, tt.req.Workdir)
				}
			}
			// The template in use cannot be deleted.
			wantCode(t, c.DeleteTemplate(ctx, tt.req.Name), "template_in_use")
		})
	}
	// The source template is untouched by the steps.
	if _, err := os.Stat(filepath.Join(rootfs, "etc", "built-by-step")); err == nil {
		t.Error("a build step wrote into the source template")
	}

	t.Run("failing step", func(t *testing.T) {
		name := "e2e-failing"
		c.DeleteTemplate(ctx, name)
		tmpl, err := c.BuildTemplate(ctx, api.BuildTemplateRequest{Name: name, FromTemplate: "minimal",
			Steps: []string{"true", "echo boom >&2; exit 3"}})
		if err != nil {
			t.Fatalf("build: %v", err)
		}
		t.Cleanup(func() { c.DeleteTemplate(ctx, name) })
		if tmpl.State != api.TemplateFailed || tmpl.Error == "" {
			t.Fatalf("failed build = %+v, want state failed with the step's error", tmpl)
		}
		_, err = c.CreateMachine(ctx, api.CreateMachineRequest{Template: name})
		wantCode(t, err, "template_not_ready")
	})
	t.Run("bad requests", func(t *testing.T) {
		for _, req := range []api.BuildTemplateRequest{
			{Name: "Bad Name", FromTemplate: "minimal"},
			{Name: "e2e-nosource"},
			{Name: "e2e-two", FromTemplate: "minimal", FromDir: dirSrc},
			{Name: "minimal", FromTemplate: "minimal"},
		} {
			if _, err := c.BuildTemplate(ctx, req); err == nil {
				t.Errorf("build %+v succeeded, want an error", req)
			}
		}
		_, err := c.BuildTemplate(ctx, api.BuildTemplateRequest{Name: "e2e-missing", FromDir: filepath.Join(src, "nonexistent")})
		wantCode(t, err, "file_not_found")
	})

	t.Run("upload", func(t *testing.T) {
		name := "e2e-upload"
		c.DeleteTemplate(ctx, name)
		gz := filepath.Join(t.TempDir(), "rootfs.tar.gz")
		if out, err := execOut("tar", "-C", dirSrc, "-czf", gz, "."); err != nil {
			t.Fatalf("tar: %v: %s", err, out)
		}
		f, err := os.Open(gz)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		tmpl, err := c.BuildTemplateFromTarball(ctx, api.BuildTemplateRequest{Name: name,
			Steps: []string{"cat /from-dir > /uploaded"}}, f)
		if err != nil || tmpl.State != api.TemplateReady || tmpl.Source != "upload" {
			t.Fatalf("upload build: %+v, %v", tmpl, err)
		}
		t.Cleanup(func() { c.DeleteTemplate(ctx, name) })
		m := newMachine(t, api.CreateMachineRequest{Template: name})
		if got, err := c.ReadFileBytes(ctx, m.ID, "/uploaded"); err != nil || string(got) != "dir\n" {
			t.Fatalf("/uploaded = %q, %v; want dir", got, err)
		}
		// An entry that leaves the root: a failed template, nothing outside.
		evil := filepath.Join(t.TempDir(), "evil.tar")
		target := filepath.Join(t.TempDir(), "target")
		os.Mkdir(target, 0o755)
		os.Symlink(target, filepath.Join(filepath.Dir(evil), "out"))
		os.WriteFile(filepath.Join(filepath.Dir(evil), "pwned"), []byte("x"), 0o644)
		if out, err := execOut("tar", "-C", filepath.Dir(evil), "-cf", evil, "out", "--transform", "s|pwned|out/pwned|", "pwned"); err != nil {
			t.Fatalf("tar: %v: %s", err, out)
		}
		ef, err := os.Open(evil)
		if err != nil {
			t.Fatal(err)
		}
		defer ef.Close()
		bad, err := c.BuildTemplateFromTarball(ctx, api.BuildTemplateRequest{Name: "e2e-evil"}, ef)
		if err != nil || bad.State != api.TemplateFailed || !strings.Contains(bad.Error, "symbolic link") {
			t.Errorf("evil upload = %+v, %v; want a failed template naming the symlink", bad, err)
		}
		c.DeleteTemplate(ctx, "e2e-evil")
		if _, err := os.Stat(filepath.Join(target, "pwned")); err == nil {
			t.Error("the upload wrote through its symlink onto the host")
		}
	})

	t.Run("host paths outside the source dirs", func(t *testing.T) {
		outside := filepath.Join(t.TempDir(), "rootfs.tar")
		if out, err := execOut("cp", tarball, outside); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		if err := os.Symlink(outside, filepath.Join(src, "escape.tar")); err != nil {
			t.Fatal(err)
		}
		for _, req := range []api.BuildTemplateRequest{
			{Name: "e2e-host", FromTarball: outside},
			{Name: "e2e-host", FromDir: "/etc"},
			{Name: "e2e-host", FromTarball: src + "/../../" + strings.TrimPrefix(outside, filepath.Dir(templateSourceDir())+"/")},
			{Name: "e2e-host", FromTarball: filepath.Join(src, "escape.tar")},
		} {
			_, err := c.BuildTemplate(ctx, req)
			wantCode(t, err, "permission_denied")
			var apiErr *client.APIError
			if errors.As(err, &apiErr) && (apiErr.Status != 403 || !strings.Contains(apiErr.SuggestedAction, "--template-source-dir")) {
				t.Errorf("%+v: got %+v, want 403 naming --template-source-dir", req, apiErr)
			}
		}
	})

	t.Run("deletion rules", func(t *testing.T) {
		for _, name := range []string{"minimal", "base"} {
			if _, err := c.GetTemplate(ctx, name); err == nil {
				wantCode(t, c.DeleteTemplate(ctx, name), "permission_denied")
			}
		}
		name := "e2e-held"
		c.DeleteTemplate(ctx, name)
		if tmpl, err := c.BuildTemplate(ctx, api.BuildTemplateRequest{Name: name, FromTemplate: "minimal"}); err != nil || tmpl.State != api.TemplateReady {
			t.Fatalf("build: %+v, %v", tmpl, err)
		}
		t.Cleanup(func() { c.DeleteTemplate(ctx, name) })
		// A stopped machine holds it.
		m := newMachine(t, api.CreateMachineRequest{Template: name})
		if _, err := c.Stop(ctx, m.ID, nil); err != nil {
			t.Fatal(err)
		}
		err := c.DeleteTemplate(ctx, name)
		wantCode(t, err, "template_in_use")
		if !strings.Contains(err.Error(), m.ID) {
			t.Errorf("template_in_use %q does not name machine %s", err, m.ID)
		}
		if _, err := c.KillMachine(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
		// A snapshot of a killed machine holds it: a restore needs the rootfs.
		m2 := newMachine(t, api.CreateMachineRequest{Template: name})
		snap, err := c.CreateSnapshot(ctx, m2.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.KillMachine(ctx, m2.ID); err != nil {
			t.Fatal(err)
		}
		err = c.DeleteTemplate(ctx, name)
		wantCode(t, err, "template_in_use")
		if !strings.Contains(err.Error(), snap.ID) {
			t.Errorf("template_in_use %q does not name snapshot %s", err, snap.ID)
		}
		if err := c.DeleteSnapshot(ctx, snap.ID, false); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteTemplate(ctx, name); err != nil {
			t.Errorf("delete once nothing uses it: %v", err)
		}
	})
	assertNoLeftovers(t)
}
