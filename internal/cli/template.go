package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func (a *app) templateCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "template",
		Aliases: []string{"templates"},
		Short:   "List, inspect, build and delete templates",
	})
	cmd.AddCommand(a.templateListCommand(), a.templateInfoCommand(), a.templateBuildCommand(), a.templateDeleteCommand())
	return cmd
}

func (a *app) templateListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List templates",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ts, err := c.ListTemplates(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if ts == nil {
					ts = []api.Template{}
				}
				return printJSON(cmd.OutOrStdout(), ts)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tSTATE\tSIZE\tSOURCE\tAGE")
			now := a.now()
			for _, t := range ts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, t.State, formatBytes(t.SizeBytes), dash(t.Source), formatAge(now, t.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func (a *app) templateInfoCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "info NAME",
		Aliases: []string{"get", "show"},
		Short:   "Show a template",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			t, err := c.GetTemplate(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.printTemplate(cmd, t)
		},
	}
}

func (a *app) printTemplate(cmd *cobra.Command, t *api.Template) error {
	if a.json {
		return printJSON(cmd.OutOrStdout(), t)
	}
	return printFields(cmd.OutOrStdout(), [][2]string{
		{"Name", t.Name},
		{"State", t.State},
		{"Error", t.Error},
		{"Source", t.Source},
		{"Size", formatBytes(t.SizeBytes)},
		{"Workdir", t.Workdir},
		{"Env", formatPairs(t.Env)},
		{"Created", formatTime(a.now(), t.CreatedAt)},
	})
}

func (a *app) templateBuildCommand() *cobra.Command {
	var (
		req        api.BuildTemplateRequest
		env        []string
		serverPath bool
	)
	cmd := &cobra.Command{
		Use:   "build NAME (--from-template T | --from-dir DIR | --from-tarball FILE)",
		Short: "Build a template and wait until it is ready",
		Long: `Build a template from exactly one source: an existing template, a root
filesystem directory or a tarball (plain, gzip, zstd or xz). The directory or
tarball is read here and uploaded to the server (a directory as a tar stream
made with tar(1), keeping numeric owners and file capabilities), so this works
from any machine, with the files this user can read. With --server-path they
are paths on the server host instead, which the server takes only from the
directories its operator allows with ` + "`nullspace serve --template-source-dir`" + `.
Each --step is a shell command run, in order, inside a machine booted from the
source; its changes become part of the template.`,
		Example: `  nullspace template build py --from-template base --step 'apt-get install -y python3-pip' --workdir /workspace
  nullspace template build mine --from-tarball ./rootfs.tar.gz
  nullspace template build mine --from-dir ./rootfs --step 'echo ready > /etc/motd'
  nullspace template build mine --from-dir /srv/rootfs --server-path`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			n := 0
			for _, s := range []string{req.FromTemplate, req.FromDir, req.FromTarball} {
				if s != "" {
					n++
				}
			}
			if n != 1 {
				return usageErrorf("want exactly one of --from-template, --from-dir, --from-tarball, got %d", n)
			}
			if serverPath && req.FromTemplate != "" {
				return usageErrorf("--server-path goes with --from-dir or --from-tarball")
			}
			for _, p := range []*string{&req.FromDir, &req.FromTarball} {
				if *p == "" {
					continue
				}
				abs, err := filepath.Abs(*p)
				if err != nil {
					return fmt.Errorf("resolve %s: %w", *p, err)
				}
				*p = abs
			}
			var err error
			if req.Env, err = parsePairs("env", env); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(cmd.ErrOrStderr(), "building template %s...\n", req.Name)
			}
			var t *api.Template
			switch {
			case serverPath || req.FromTemplate != "":
				t, err = c.BuildTemplate(cmd.Context(), req)
			case req.FromTarball != "":
				t, err = uploadTarball(cmd.Context(), c, req)
			default:
				t, err = uploadDir(cmd.Context(), c, req)
			}
			if err != nil {
				return err
			}
			if a.json {
				if err := printJSON(cmd.OutOrStdout(), t); err != nil {
					return err
				}
			}
			if t.State == api.TemplateFailed {
				return fmt.Errorf("template %s failed to build: %s", t.Name, t.Error)
			}
			if !a.json {
				fmt.Fprintf(cmd.OutOrStdout(), "template %s is %s (%s)\n", t.Name, t.State, formatBytes(t.SizeBytes))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.FromTemplate, "from-template", "", "build on an existing template")
	f.StringVar(&req.FromDir, "from-dir", "", "root filesystem directory, uploaded (a path on the server host with --server-path)")
	f.StringVar(&req.FromTarball, "from-tarball", "", "root filesystem tarball, uploaded (a path on the server host with --server-path)")
	f.BoolVar(&serverPath, "server-path", false, "--from-dir/--from-tarball name a path on the server host, under one of its --template-source-dir")
	f.StringArrayVar(&req.Steps, "step", nil, "shell command to run in the template (repeatable, in order)")
	f.StringVar(&req.Workdir, "workdir", "", "default working directory of machines")
	f.StringArrayVar(&env, "env", nil, "default environment variable KEY=VALUE (repeatable)")
	return cmd
}

// uploadTarball builds req from its from_tarball, a file here, uploaded.
func uploadTarball(ctx context.Context, c *client.Client, req api.BuildTemplateRequest) (*api.Template, error) {
	f, err := os.Open(req.FromTarball)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: give a tarball, or a directory with --from-dir", req.FromTarball)
	}
	req.FromTarball = ""
	return c.BuildTemplateFromTarball(ctx, req, f)
}

// uploadDir builds req from its from_dir, a directory here, uploaded as the
// tar stream tar(1) makes of it (numeric owners, file capabilities kept).
// If tar fails, the upload is cut off, and the server keeps nothing of it.
func uploadDir(ctx context.Context, c *client.Client, req api.BuildTemplateRequest) (*api.Template, error) {
	dir := req.FromDir
	if fi, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: give a root filesystem directory, or a tarball with --from-tarball", dir)
	}
	req.FromDir = ""
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "tar", "-c", "-f", "-", "-C", dir, "--numeric-owner", "--xattrs",
		"--xattrs-include=security.capability", ".")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("tar %s: %w", dir, err)
	}
	tarErr := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("tar %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
		}
		pw.CloseWithError(err) // nil: the end of the stream
		tarErr <- err
	}()
	t, err := c.BuildTemplateFromTarball(ctx, req, pr)
	pr.CloseWithError(errors.New("upload ended"))
	cancel()
	var apiErr *client.APIError
	if terr := <-tarErr; terr != nil && err != nil && !errors.As(err, &apiErr) {
		return nil, terr // why the upload broke off
	}
	return t, err
}

func (a *app) templateDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME...",
		Aliases: []string{"rm"},
		Short:   "Delete templates",
		Args:    minArgs(1, "NAME..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := c.DeleteTemplate(cmd.Context(), name); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
