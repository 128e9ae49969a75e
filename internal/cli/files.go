package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func (a *app) filesCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:     "files",
		Aliases: []string{"file", "fs"},
		Short:   "Read, write and manage files in a machine",
	})
	cmd.AddCommand(
		a.filesReadCommand(),
		a.filesWriteCommand(),
		a.filesListCommand(),
		a.filesStatCommand(),
		a.filesRemoveCommand(),
		a.filesMkdirCommand(),
		a.filesMoveCommand(),
		a.filesWatchCommand(),
	)
	return cmd
}

func (a *app) filesReadCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "read ID PATH",
		Aliases: []string{"cat"},
		Short:   "Write a file's raw content to stdout",
		Args:    exactArgs(2, "ID PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			rc, err := c.ReadFile(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			defer rc.Close()
			if _, err := io.Copy(cmd.OutOrStdout(), rc); err != nil {
				return fmt.Errorf("read %s in machine %s: %w", args[1], args[0], err)
			}
			return nil
		},
	}
}

func (a *app) filesWriteCommand() *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "write ID PATH [LOCALFILE|-]",
		Short: "Write a local file, or stdin, to a file in a machine",
		Long: `Write a local file to PATH in a machine, creating or replacing it. Without
LOCALFILE, or with -, the content is streamed from stdin.`,
		Example: `  nullspace files write $ID /workspace/main.py main.py
  echo hello | nullspace files write $ID /tmp/hello.txt --mode 0600`,
		Args: rangeArgs(2, 3, "ID PATH [LOCALFILE|-]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var perm fs.FileMode
			if mode != "" {
				n, err := strconv.ParseUint(mode, 8, 32)
				if err != nil || n == 0 || n > 0o777 {
					return usageErrorf("invalid --mode %q: want octal permission bits such as 0644", mode)
				}
				perm = fs.FileMode(n)
			}
			src := cmd.InOrStdin()
			if len(args) == 3 && args[2] != "-" {
				f, err := os.Open(args[2])
				if err != nil {
					return err // *PathError names the file
				}
				defer f.Close()
				src = f
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.WriteFile(cmd.Context(), args[0], args[1], src, perm)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d bytes to %s\n", res.Size, res.Path)
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "octal permission bits, e.g. 0644 (default: the server's)")
	return cmd
}

func (a *app) filesListCommand() *cobra.Command {
	var depth int
	cmd := &cobra.Command{
		Use:     "ls ID [PATH]",
		Aliases: []string{"list"},
		Short:   "List a directory (default /)",
		Args:    rangeArgs(1, 2, "ID [PATH]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/"
			if len(args) == 2 {
				path = args[1]
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			entries, err := c.ListFiles(cmd.Context(), args[0], path, depth)
			if err != nil {
				return err
			}
			if a.json {
				if entries == nil {
					entries = []api.FileInfo{}
				}
				return printJSON(cmd.OutOrStdout(), entries)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "TYPE\tMODE\tSIZE\tMODIFIED\tNAME")
			for _, e := range entries {
				name := e.Name
				if depth > 1 {
					name = e.Path
				}
				if e.Target != "" {
					name += " -> " + e.Target
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", e.Type, e.Mode, e.Size, e.ModTime.Local().Format("2006-01-02 15:04"), name)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().IntVar(&depth, "depth", 0, "levels to list (0: server default, 1)")
	return cmd
}

func (a *app) filesStatCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stat ID PATH",
		Short: "Describe a file",
		Args:  exactArgs(2, "ID PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			fi, err := c.Stat(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.printFileInfo(cmd.OutOrStdout(), fi)
		},
	}
}

func (a *app) printFileInfo(w io.Writer, fi *api.FileInfo) error {
	if a.json {
		return printJSON(w, fi)
	}
	return printFields(w, [][2]string{
		{"Path", fi.Path},
		{"Type", fi.Type},
		{"Target", fi.Target},
		{"Size", strconv.FormatInt(fi.Size, 10)},
		{"Mode", fi.Mode},
		{"Modified", formatTime(a.now(), fi.ModTime)},
	})
}

func (a *app) filesRemoveCommand() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "rm ID PATH...",
		Short: "Remove files, or directories with -r",
		Args:  minArgs(2, "ID PATH..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, p := range args[1:] {
				if err := c.Remove(cmd.Context(), args[0], p, recursive); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "remove directories and their contents")
	return cmd
}

func (a *app) filesMkdirCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "mkdir ID PATH",
		Short: "Create a directory",
		Args:  exactArgs(2, "ID PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			fi, err := c.Mkdir(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), fi)
			}
			return nil
		},
	}
}

func (a *app) filesMoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "mv ID FROM TO",
		Aliases: []string{"rename"},
		Short:   "Rename or move a file or directory",
		Args:    exactArgs(3, "ID FROM TO"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			fi, err := c.Rename(cmd.Context(), args[0], args[1], args[2])
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), fi)
			}
			return nil
		},
	}
}

func (a *app) filesWatchCommand() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "watch ID PATH",
		Short: "Print the changes under a directory as they happen (Ctrl-C to stop)",
		Long: `Print the changes made under a directory in the machine, one per line:
TYPE PATH (create, write, remove, chmod), rename OLD -> NEW, until Ctrl-C or
the directory goes. A dropped connection is reopened from the last event
seen, so none the machine still holds is missed. With --json, each event
as a JSON line.`,
		Example: `  nullspace files watch $ID /workspace --recursive`,
		Args:    exactArgs(2, "ID PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			opts := client.WatchOptions{Path: args[1], Recursive: recursive}
			print := func(e api.FileEvent) error {
				if e.Seq > 0 {
					opts.After = e.Seq
				}
				switch {
				case e.Type == api.FileEventWatching:
					opts.WatchID = e.WatchID
					return nil
				case a.json:
					return printJSONLine(out, e)
				case e.Type == api.FileEventRename:
					_, err := fmt.Fprintf(out, "rename %s -> %s\n", e.OldPath, e.Path)
					return err
				case e.Type == api.FileEventLost:
					_, err := fmt.Fprintf(out, "lost %d events\n", e.Lost)
					return err
				}
				_, err := fmt.Fprintf(out, "%s %s\n", e.Type, e.Path)
				return err
			}
			defer func() {
				if opts.WatchID != "" {
					c.Unwatch(context.WithoutCancel(ctx), args[0], opts.WatchID)
				}
			}()
			for attempt := 0; ; attempt++ {
				err := c.WatchDir(ctx, args[0], opts, print)
				if ctx.Err() != nil {
					return nil // Ctrl-C
				}
				var ae *client.APIError
				if err == nil || errors.As(err, &ae) || opts.WatchID == "" || attempt >= 5 {
					return err // the watch ended, or was refused
				}
				time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
			}
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "watch every directory under PATH too")
	return cmd
}
