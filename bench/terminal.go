package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/template"
)

// The issue-14 measurements, in the same run:
//
//   - keystroke echo: one byte typed to `cat` on a terminal (stty raw
//     -echo: cat itself echoes it) until it comes back, through the API's
//     WebSocket attach and through the SSH gateway, beside `runsc exec` of
//     cat in a raw sandbox with pipes;
//   - ssh to a prompt on a paused machine (auto_resume: the gateway wakes
//     it) until the shell's prompt shows, beside connect through the API and
//     then the same ssh to the running machine.

const (
	metricTermEcho  = "terminal_keystroke_echo" // one byte to cat and back
	metricSSHPrompt = "ssh_to_prompt_paused"    // ssh until the prompt, from paused

	sideWS         = "websocket"
	sideSSH        = "ssh"
	sideConnectSSH = "connect+ssh"

	// echoCmd makes cat the echo: the terminal's own echo is off, so what
	// comes back went through the program.
	echoCmd = "stty raw -echo; echo ready; exec cat"
)

func measureTerminal(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results) error {
	tmpl := template.Minimal
	if slices.Contains(ns.extraTemplates, template.Base) {
		tmpl = template.Base
	}
	if ns.inst.SSHAddr == "" {
		return fmt.Errorf("the bench server runs without its SSH gateway")
	}
	fmt.Fprintf(os.Stderr, "bench: terminals (template %s): keystroke echo via WebSocket, SSH and runsc exec; ssh to a prompt on a paused machine\n", tmpl)
	signer, cleanupKey, err := benchSSHKey(ctx, ns.client)
	if err != nil {
		return err
	}
	defer cleanupKey()

	m, release, err := ns.autoResumeMachine(ctx, tmpl)
	if err != nil {
		return err
	}
	defer release()

	// Keystroke echo, the three ways, interleaved.
	wsEcho, closeWS, err := wsTerminalEcho(ctx, ns.client, m.ID)
	if err != nil {
		return err
	}
	defer closeWS()
	sshEcho, closeSSH, err := sshTerminalEcho(ns.inst.SSHAddr, m.ID, signer)
	if err != nil {
		return err
	}
	defer closeSSH()
	rc, err := raw.warm(ctx, 0)
	if err != nil {
		return err
	}
	defer raw.kill(context.WithoutCancel(ctx), rc, nil)
	rawEcho, closeRaw, err := raw.catEcho(ctx, rc)
	if err != nil {
		return err
	}
	defer closeRaw()
	echoes := map[string]func() (time.Duration, error){sideWS: wsEcho, sideSSH: sshEcho, sideRaw: rawEcho}
	order := []string{sideWS, sideSSH, sideRaw}
	for range cfg.warmup + 3 {
		for _, side := range order {
			if _, err := echoes[side](); err != nil {
				return fmt.Errorf("%s echo: %w", side, err)
			}
		}
	}
	n := max(cfg.n*10, 200)
	for i := range n {
		for j := range order {
			side := order[(i+j)%len(order)] // rotate who goes first
			d, err := echoes[side]()
			if err != nil {
				return fmt.Errorf("%s echo: %w", side, err)
			}
			res.addDuration(metricTermEcho, side, tmpl, d)
		}
	}
	closeWS()
	closeSSH()

	// ssh to a prompt: a paused machine woken by the gateway, beside
	// connect + the same ssh.
	for i := range cfg.n {
		for _, side := range alternate(i, sideSSH, sideConnectSSH) {
			if err := pauseSettled(ctx, ns.client, m.ID); err != nil {
				return err
			}
			start := time.Now()
			if side == sideConnectSSH {
				if _, err := ns.client.Connect(ctx, m.ID); err != nil {
					return err
				}
			}
			if err := sshToPrompt(ns.inst.SSHAddr, m.ID, signer); err != nil {
				return fmt.Errorf("%s: %w", side, err)
			}
			res.addDuration(metricSSHPrompt, side, tmpl, time.Since(start))
		}
		progress(i+1, cfg.n)
	}
	return nil
}

// benchSSHKey registers a new key for the bench's team.
func benchSSHKey(ctx context.Context, c *client.Client) (ssh.Signer, func(), error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	k, err := c.AddSSHKey(ctx, string(ssh.MarshalAuthorizedKey(signer.PublicKey())), "bench")
	if err != nil {
		return nil, nil, err
	}
	return signer, func() { c.DeleteSSHKey(context.WithoutCancel(ctx), k.ID) }, nil
}

// wsTerminalEcho starts the echo on a terminal and attaches to it.
func wsTerminalEcho(ctx context.Context, c *client.Client, id string) (func() (time.Duration, error), func(), error) {
	pid, err := c.StartCommand(ctx, id, api.RunCommandRequest{Shell: echoCmd, PTY: &api.PTYSize{Rows: 24, Cols: 80}})
	if err != nil {
		return nil, nil, err
	}
	ws, err := c.Attach(ctx, id, pid, client.AttachOptions{})
	if err != nil {
		return nil, nil, err
	}
	ws.SetReadLimit(1 << 20)
	var screen []byte
	for !bytes.Contains(screen, []byte("ready")) {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			return nil, nil, err
		}
		if typ == websocket.MessageBinary {
			screen = append(screen, b...)
		}
	}
	echo := func() (time.Duration, error) {
		start := time.Now()
		if err := ws.Write(ctx, websocket.MessageBinary, []byte("x")); err != nil {
			return 0, err
		}
		for {
			typ, b, err := ws.Read(ctx)
			if err != nil {
				return 0, err
			}
			if typ == websocket.MessageBinary && bytes.Contains(b, []byte("x")) {
				return time.Since(start), nil
			}
		}
	}
	done := func() {
		c.KillProcess(context.WithoutCancel(ctx), id, pid)
		ws.CloseNow()
	}
	return echo, done, nil
}

// sshTerminalEcho runs the echo in an SSH session on a terminal.
func sshTerminalEcho(addr, id string, signer ssh.Signer) (func() (time.Duration, error), func(), error) {
	conn, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: id, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 30 * time.Second})
	if err != nil {
		return nil, nil, err
	}
	s, err := conn.NewSession()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	stdin, _ := s.StdinPipe()
	stdout, _ := s.StdoutPipe()
	if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if err := s.Start(echoCmd); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if err := readUntil(stdout, "ready"); err != nil {
		conn.Close()
		return nil, nil, err
	}
	echo := pipeEcho(stdin, stdout)
	done := func() {
		s.Signal(ssh.SIGKILL)
		s.Close()
		conn.Close()
	}
	return echo, done, nil
}

// sshToPrompt signs in, opens a shell on a terminal and waits for its
// prompt, then types exit (so that no shell is left behind; the time
// includes writing it, not its effect).
func sshToPrompt(addr, id string, signer ssh.Signer) error {
	conn, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: id, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 60 * time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	s, err := conn.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	stdin, _ := s.StdinPipe()
	stdout, _ := s.StdoutPipe()
	if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err != nil {
		return err
	}
	if err := s.Shell(); err != nil {
		return err
	}
	if err := readUntil(stdout, "# "); err != nil {
		return err
	}
	stdin.Write([]byte("exit\n")) // the shell ends; nothing is left running
	return nil
}

// pipeEcho times one byte written to w until it is read back from r.
func pipeEcho(w io.Writer, r io.Reader) func() (time.Duration, error) {
	buf := make([]byte, 256)
	return func() (time.Duration, error) {
		start := time.Now()
		if _, err := w.Write([]byte("x")); err != nil {
			return 0, err
		}
		for {
			n, err := r.Read(buf)
			if err != nil {
				return 0, err
			}
			if bytes.Contains(buf[:n], []byte("x")) {
				return time.Since(start), nil
			}
		}
	}
}

func readUntil(r io.Reader, want string) error {
	var seen []byte
	buf := make([]byte, 4096)
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(string(seen), want) {
		if time.Now().After(deadline) {
			return fmt.Errorf("never saw %q: %q", want, seen)
		}
		n, err := r.Read(buf)
		seen = append(seen, buf[:n]...)
		if err != nil {
			return fmt.Errorf("waiting for %q: %w (saw %q)", want, err, seen)
		}
	}
	return nil
}

// catEcho runs cat in a raw sandbox with `runsc exec`, its stdin and
// stdout pipes to this process.
func (r *rawSide) catEcho(ctx context.Context, c *rawContainer) (func() (time.Duration, error), func(), error) {
	cmd := r.runsc.Command(ctx, "", "exec", c.id, "cat")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	echo := pipeEcho(stdin, stdout)
	done := func() {
		stdin.Close()
		cmd.Wait()
	}
	return echo, done, nil
}

// printTerminal prints the terminal numbers, p50, each beside its baseline.
func (r *results) printTerminal(w io.Writer) {
	p50 := func(metric, side string) float64 {
		for _, s := range r.Series {
			if s.Metric == metric && s.Side == side && len(s.Samples) > 0 {
				v := slices.Clone(s.Samples)
				slices.Sort(v)
				return percentile(v, .5)
			}
		}
		return 0
	}
	raw := p50(metricTermEcho, sideRaw)
	if raw == 0 {
		return
	}
	fmt.Fprintln(w, "\nTerminals (issue 14), p50:")
	for _, side := range []string{sideWS, sideSSH} {
		v := p50(metricTermEcho, side)
		fmt.Fprintf(w, "  keystroke echo via %s: %.2f ms; runsc exec with pipes %.2f ms (%.2fx)\n", side, v, raw, ratio(v, raw))
	}
	woken, connect := p50(metricSSHPrompt, sideSSH), p50(metricSSHPrompt, sideConnectSSH)
	fmt.Fprintf(w, "  ssh to a prompt on a paused machine: %.1f ms; connect + ssh %.1f ms (%.2fx)\n", woken, connect, ratio(woken, connect))
}
