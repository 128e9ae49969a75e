package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"nullspace.dev/nullspace/api"
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
	src := t.TempDir()
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
		_, err := c.BuildTemplate(ctx, api.BuildTemplateRequest{Name: "e2e-missing", FromDir: "/nonexistent/rootfs"})
		wantCode(t, err, "file_not_found")
	})
	assertNoLeftovers(t)
}
