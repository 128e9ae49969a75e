package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("Validate requires root; run the tests as root (make test does)")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "bin")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	good := Config{Addr: "127.0.0.1:7700", DataDir: dir, Runsc: exe, AgentBinary: exe, MaxFileBytes: 1,
		TemplateUploadMaxBytes: 1, TemplateSourceDirs: []string{dir}}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"bad addr", func(c *Config) { c.Addr = "nope" }, "--addr"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "--data-dir"},
		{"no runsc", func(c *Config) { c.Runsc = filepath.Join(dir, "missing") }, "make build"},
		{"runsc is a dir", func(c *Config) { c.Runsc = dir }, "runsc not found"},
		{"no agent", func(c *Config) { c.AgentBinary = "" }, "agent binary"},
		{"zero file limit", func(c *Config) { c.MaxFileBytes = 0 }, "--max-file-bytes"},
		{"negative overcommit", func(c *Config) { c.MemoryOvercommit = -1 }, "--memory-overcommit"},
		{"absurd overcommit", func(c *Config) { c.MemoryOvercommit = 1000 }, "--memory-overcommit"},
		{"negative disk default", func(c *Config) { c.DiskDefaultMB = -1 }, "--disk-default-mb"},
		{"negative disk max", func(c *Config) { c.DiskMaxMB = -5 }, "--disk-max-mb"},
		{"disk default above max", func(c *Config) { c.DiskDefaultMB, c.DiskMaxMB = 2048, 1024 }, "at most the maximum"},
		{"disk default alone above the built-in max", func(c *Config) { c.DiskDefaultMB = 200 << 10 }, ""},
		{"zero upload limit", func(c *Config) { c.TemplateUploadMaxBytes = 0 }, "--template-upload-max-bytes"},
		{"relative source dir", func(c *Config) { c.TemplateSourceDirs = []string{"rootfs"} }, "--template-source-dir"},
		{"missing source dir", func(c *Config) { c.TemplateSourceDirs = []string{filepath.Join(dir, "missing")} }, "--template-source-dir"},
		{"file as source dir", func(c *Config) { c.TemplateSourceDirs = []string{exe} }, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
			if tt.want == "" && c.TemplatesDir != filepath.Join(dir, "templates") {
				t.Errorf("templates dir = %q, want the default under the data dir", c.TemplatesDir)
			}
		})
	}
}
