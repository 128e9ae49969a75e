package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// sshKey is a key pair of the test, registered for the team.
type sshKey struct {
	signer  ssh.Signer
	keyFile string // the private key in OpenSSH form, for the ssh binary
}

func newSSHKey(t *testing.T, register bool) sshKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	k := sshKey{signer: signer, keyFile: filepath.Join(t.TempDir(), "id_ed25519")}
	if err := os.WriteFile(k.keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if register {
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " e2e@test"
		got, err := env.client.AddSSHKey(t.Context(), line, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.client.DeleteSSHKey(context.WithoutCancel(t.Context()), got.ID) })
		if got.Name != "e2e@test" || got.Fingerprint != ssh.FingerprintSHA256(signer.PublicKey()) {
			t.Fatalf("registered key %+v", got)
		}
	}
	return k
}

// sshDial signs in to machine id through the gateway.
func sshDial(t *testing.T, id string, auth ssh.AuthMethod) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", env.inst.SSHAddr, &ssh.ClientConfig{User: id, Auth: []ssh.AuthMethod{auth},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("ssh to %s: %v", id, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sshExec runs command in a session of its own: stdout, stderr, exit code.
func sshExec(t *testing.T, c *ssh.Client, command, stdin string) (string, string, int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != "" {
		s.Stdin = strings.NewReader(stdin)
	}
	code := 0
	if err := s.Run(command); err != nil {
		var ee *ssh.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("ssh %q: %v", command, err)
		}
		code = ee.ExitStatus()
	}
	return stdout.String(), stderr.String(), code
}

// terminal is an SSH shell on a pseudo-terminal, as a client sees it.
type sshTerminal struct {
	t      *testing.T
	s      *ssh.Session
	stdin  io.WriteCloser
	screen *lockedBuffer
	stderr *lockedBuffer
}

func sshShell(t *testing.T, c *ssh.Client, rows, cols int) *sshTerminal {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	term := &sshTerminal{t: t, s: s, screen: &lockedBuffer{}, stderr: &lockedBuffer{}}
	s.Stdout, s.Stderr = term.screen, term.stderr
	if term.stdin, err = s.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("xterm-256color", rows, cols, ssh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	return term
}

func (st *sshTerminal) keys(s string) {
	st.t.Helper()
	if _, err := st.stdin.Write([]byte(s)); err != nil {
		st.t.Fatal(err)
	}
}

func (st *sshTerminal) until(want string) {
	st.t.Helper()
	waitFor(st.t, st.screen, want)
}

func waitFor(t *testing.T, b *lockedBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %q: %q", want, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSSH: the SSH gateway with x/crypto/ssh and with OpenSSH's ssh: a
// shell on a terminal (its size, window changes, TERM, Ctrl-C, the exit
// code), exec requests with stdout, stderr, stdin and exit codes, sign-in
// by key and by token, a paused machine woken by the connection, and the
// refusals: an unknown key, a machine without auto_resume, bad keys.
func TestSSH(t *testing.T) {
	ctx := t.Context()
	key := newSSHKey(t, true)
	m := newMachine(t, api.CreateMachineRequest{Template: "base", OnTimeout: "pause", AutoResume: true})
	t.Cleanup(func() {
		if got, err := env.client.GetMachine(context.WithoutCancel(ctx), m.ID); err == nil {
			env.client.KillMachine(context.WithoutCancel(ctx), got.LatestID)
		}
	})

	t.Run("keys", func(t *testing.T) {
		line := string(ssh.MarshalAuthorizedKey(key.signer.PublicKey()))
		_, err := env.client.AddSSHKey(ctx, line, "again")
		wantCode(t, err, "ssh_key_exists")
		_, err = env.client.AddSSHKey(ctx, "ssh-ed25519 AAAAnot-a-key", "")
		wantCode(t, err, "ssh_key_invalid")
		keys, err := env.client.ListSSHKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, k := range keys {
			found = found || k.Fingerprint == ssh.FingerprintSHA256(key.signer.PublicKey())
		}
		if !found {
			t.Fatalf("the key is not listed: %+v", keys)
		}
		wantCode(t, env.client.DeleteSSHKey(ctx, "key_nope"), "ssh_key_not_found")
	})

	c := sshDial(t, m.ID, ssh.PublicKeys(key.signer))
	t.Run("terminal", func(t *testing.T) {
		term := sshShell(t, c, 40, 120)
		term.keys("stty size; echo term=$TERM\n")
		term.until("40 120")
		term.until("term=xterm-256color")
		if err := term.s.WindowChange(50, 132); err != nil {
			t.Fatal(err)
		}
		term.keys("stty size\n")
		term.until("50 132")
		term.keys("sleep 100\n")
		time.Sleep(500 * time.Millisecond)
		term.keys("\x03") // Ctrl-C reaches sleep, the foreground job
		term.keys("echo after=$?\n")
		term.until("after=130")
		term.keys("exit 7\n")
		err := term.s.Wait()
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 7 {
			t.Fatalf("shell ended %v, want exit status 7; screen %q", err, term.screen.String())
		}
	})

	t.Run("exec", func(t *testing.T) {
		stdout, stderr, code := sshExec(t, c, "echo out; echo err >&2; exit 3", "")
		if stdout != "out\n" || stderr != "err\n" || code != 3 {
			t.Fatalf("exec: stdout %q stderr %q code %d", stdout, stderr, code)
		}
		// stdin, then its end: cat sees EOF and exits.
		stdout, _, code = sshExec(t, c, "tr a-z A-Z", "hello over ssh\n")
		if stdout != "HELLO OVER SSH\n" || code != 0 {
			t.Fatalf("stdin: %q, %d", stdout, code)
		}
	})

	t.Run("token", func(t *testing.T) {
		tok, err := env.client.SSHToken(ctx, m.ID, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if tok.User != m.LineageID || !strings.Contains(tok.Command, tok.User) {
			t.Fatalf("token %+v", tok)
		}
		tc := sshDial(t, m.ID, ssh.Password(tok.Token))
		if out, _, code := sshExec(t, tc, "echo signed-in-by-token", ""); out != "signed-in-by-token\n" || code != 0 {
			t.Fatalf("by token: %q %d", out, code)
		}
		_, err = env.client.SSHToken(ctx, m.ID, 48*time.Hour)
		wantCode(t, err, "invalid_argument")
	})

	// OpenSSH's client, as people use it.
	known := filepath.Join(t.TempDir(), "known_hosts")
	openssh := func(k sshKey, user string, args ...string) (string, string, int) {
		t.Helper()
		host, port, _ := strings.Cut(env.inst.SSHAddr, ":")
		argv := append([]string{"-F", "/dev/null", "-p", port, "-i", k.keyFile, "-o", "IdentitiesOnly=yes",
			"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "UserKnownHostsFile=" + known,
			"-o", "ConnectTimeout=10", user + "@" + host}, args...)
		cmd := exec.CommandContext(ctx, "ssh", argv...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("ssh: %v", err)
		}
		return stdout.String(), stderr.String(), code
	}
	t.Run("openssh", func(t *testing.T) {
		if out, errOut, code := openssh(key, m.ID, "echo via-openssh; exit 4"); out != "via-openssh\n" || code != 4 {
			t.Fatalf("ssh exec: %q %q %d", out, errOut, code)
		}
		if out, errOut, code := openssh(key, m.ID, "-tt", "tty; stty size"); !strings.Contains(out, "/dev/pts/") || code != 0 {
			t.Fatalf("ssh -tt: %q %q %d", out, errOut, code)
		}
		// The host key was remembered on first use and matches next time.
		if b, err := os.ReadFile(known); err != nil || !strings.Contains(string(b), "ssh-ed25519") {
			t.Fatalf("known_hosts: %q, %v", b, err)
		}
		stranger := newSSHKey(t, false)
		if _, errOut, code := openssh(stranger, m.ID, "true"); code != 255 || !strings.Contains(errOut, "Permission denied") {
			t.Fatalf("an unknown key: %q %d", errOut, code)
		}
		if _, errOut, code := openssh(key, "mch_nope", "true"); code != 255 || !strings.Contains(errOut, "machine_not_found") {
			t.Fatalf("no such machine: %q %d", errOut, code)
		}
	})

	t.Run("wake", func(t *testing.T) {
		// Drop the connection made while it ran: its sessions are over.
		c.Close()
		pause(t, m.ID)
		out, errOut, code := openssh(key, m.ID, "echo woke")
		if out != "woke\n" || code != 0 {
			t.Fatalf("ssh to a paused machine: %q %q %d", out, errOut, code)
		}
		got := getMachine(t, m.ID)
		if got.LatestID == m.ID || got.State != api.StatePaused {
			t.Fatalf("after ssh: %+v, want the paused alias of a resumed machine", got)
		}
		if latest := getMachine(t, got.LatestID); latest.State != api.StateRunning {
			t.Fatalf("latest execution %s is %s", latest.ID, latest.State)
		}
		evs, err := env.client.ListEvents(ctx, client.EventQuery{MachineID: got.LatestID, Types: []string{"machine.resumed"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 1 || evs[0].Cause != "ssh" {
			t.Fatalf("resume events of %s: %+v, want one with cause ssh", got.LatestID, evs)
		}

		plain := newMachine(t, api.CreateMachineRequest{Template: "base"})
		pause(t, plain.ID)
		_, errOut, code = openssh(key, plain.ID, "true")
		if code != 255 || !strings.Contains(errOut, "machine_paused_auto_resume_disabled") {
			t.Fatalf("a paused machine without auto_resume: %q %d", errOut, code)
		}
	})
}

// TestSSHServerRestart: a terminal session open while the server stops
// ends on the client with a notice that names the pid (and status 255);
// the shell lives on in the machine and is attached again, its variable
// set, through the API.
func TestSSHServerRestart(t *testing.T) {
	key := newSSHKey(t, true)
	m := newMachine(t, api.CreateMachineRequest{Template: "base"})
	c := sshDial(t, m.ID, ssh.PublicKeys(key.signer))
	term := sshShell(t, c, 24, 80)
	term.keys("export kept=across-restart; echo set\n")
	term.until("set")
	// A WebSocket attach open at the same time.
	wpid, err := env.client.StartCommand(t.Context(), m.ID, api.RunCommandRequest{Cmd: []string{"sh"}, PTY: &api.PTYSize{Rows: 24, Cols: 80}})
	if err != nil {
		t.Fatal(err)
	}
	ws := attach(t, m.ID, wpid, client.AttachOptions{})
	ws.keys("echo attached\n")
	ws.until("attached")

	if err := env.inst.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := ws.ws.Read(rctx); err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "attach again") {
				t.Fatalf("the attach ended with %v, want 1001 and a reason", err)
			}
			break
		}
	}
	restarted := false
	defer func() {
		if !restarted {
			restartServer()
		}
	}()
	waitDone := make(chan error, 1)
	go func() { waitDone <- term.s.Wait() }()
	select {
	case err := <-waitDone:
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 255 {
			t.Fatalf("session ended %v, want exit status 255", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the session did not end with the server")
	}
	notice := term.stderr.String()
	match := regexp.MustCompile(`--pid (\d+)`).FindStringSubmatch(notice)
	if match == nil {
		t.Fatalf("notice %q names no pid", notice)
	}
	pid, _ := strconv.Atoi(match[1])
	if err := restartServer(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	a := attach(t, m.ID, pid, client.AttachOptions{})
	a.keys("echo got=$kept\n")
	a.until("got=across-restart")
	a.keys("exit\n")
	a.until("")
}

// TestTerminalKeepsMachineAwake: someone typing in an SSH terminal keeps a
// machine with an idle timeout running; once they stop it is paused under
// the open session, which ends with a notice (status 255) rather than
// hanging on the vanished sandbox.
func TestTerminalKeepsMachineAwake(t *testing.T) {
	key := newSSHKey(t, true)
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", IdleTimeoutMS: 2000})
	t.Cleanup(func() {
		if got, err := env.client.GetMachine(context.WithoutCancel(t.Context()), m.ID); err == nil {
			env.client.KillMachine(context.WithoutCancel(t.Context()), got.LatestID)
		}
	})
	c := sshDial(t, m.ID, ssh.PublicKeys(key.signer))
	term := sshShell(t, c, 24, 80)
	for i := range 10 {
		term.keys(fmt.Sprintf("echo tick%d\n", i))
		term.until(fmt.Sprintf("tick%d", i))
		time.Sleep(500 * time.Millisecond)
	}
	if st := getMachine(t, m.ID).State; st != api.StateRunning {
		t.Fatalf("a machine typed in for 5 s with a 2 s idle timeout is %s", st)
	}
	waitState(t, m.ID, api.StatePaused, 30*time.Second)
	waitDone := make(chan error, 1)
	go func() { waitDone <- term.s.Wait() }()
	select {
	case err := <-waitDone:
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 255 || !strings.Contains(term.stderr.String(), "was paused") {
			t.Fatalf("session ended %v, stderr %q; want status 255 and a notice", err, term.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived its machine's pause")
	}
}
