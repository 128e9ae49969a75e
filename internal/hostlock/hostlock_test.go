package hostlock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestAcquire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serve.lock")
	first, err := Acquire(path, []byte(`{"pid":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// A second open file description conflicts, in this process too.
	_, err = Acquire(path, []byte(`{"pid":2}`))
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second Acquire: got %v, want a *HeldError", err)
	}
	if string(held.Record) != `{"pid":1}` {
		t.Errorf("holder's record: got %q, want %q", held.Record, `{"pid":1}`)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := Acquire(path, []byte(`{"pid":3}`))
	if err != nil {
		t.Fatalf("Acquire after Close: %v", err)
	}
	defer again.Close()
	if b, _ := os.ReadFile(path); string(b) != `{"pid":3}` {
		t.Errorf("record after a shorter one was replaced: got %q", b)
	}
}

func TestRegistryClaim(t *testing.T) {
	reg := Registry{Dir: filepath.Join(t.TempDir(), "run")}
	none := func([][]byte) error { return nil }
	a, err := reg.Claim("node-a", []byte("a"), none)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	// The same key is refused with its holder's record.
	_, err = reg.Claim("node-a", []byte("a2"), none)
	var held *HeldError
	if !errors.As(err, &held) || string(held.Record) != "a" {
		t.Fatalf("claim of a held key: got %v, want a *HeldError with record a", err)
	}

	// Another key sees the live holders' records; a refusal leaves it
	// unclaimed.
	var seen []string
	refuse := errors.New("overlaps a")
	_, err = reg.Claim("node-b", []byte("b"), func(hs [][]byte) error {
		seen = strs(hs)
		return refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("claim refused by check: got %v, want %v", err, refuse)
	}
	if !slices.Equal(seen, []string{"a"}) {
		t.Errorf("records checked: got %q, want [a]", seen)
	}
	b, err := reg.Claim("node-b", []byte("b"), none)
	if err != nil {
		t.Fatalf("claim after a refusal: %v", err)
	}

	// A released holder is gone: it is not checked and its file is removed.
	b.Close()
	seen = nil
	c, err := reg.Claim("node-c", []byte("c"), func(hs [][]byte) error {
		seen = strs(hs)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !slices.Equal(seen, []string{"a"}) {
		t.Errorf("records checked: got %q, want [a] (b was released)", seen)
	}
	if _, err := os.Stat(filepath.Join(reg.Dir, "node-b.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("released holder's file: got %v, want it removed", err)
	}
}

func strs(bs [][]byte) []string {
	var out []string
	for _, b := range bs {
		out = append(out, string(b))
	}
	return out
}

func TestRegistryKeys(t *testing.T) {
	reg := Registry{Dir: t.TempDir()}
	for _, key := range []string{"", ".claims", "../x", "a/b", "Upper", "x.lock"} {
		if l, err := reg.Claim(key, nil, func([][]byte) error { return nil }); err == nil {
			l.Close()
			t.Errorf("Claim(%q): got no error, want one", key)
		}
	}
}

// helperEnv makes the test binary a process that holds a lock and waits.
const helperEnv = "HOSTLOCK_TEST_HOLD"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		if _, err := Acquire(path, fmt.Appendf(nil, "pid %d", os.Getpid())); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("held")
		select {} // killed by the test
	}
	os.Exit(m.Run())
}

// TestKilledHolder: a holder killed with SIGKILL leaves the lock free.
func TestKilledHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serve.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "held\n" {
		t.Fatalf("helper: got %q, want held", line)
	}
	_, err = Acquire(path, nil)
	var held *HeldError
	if !errors.As(err, &held) || string(held.Record) != fmt.Sprintf("pid %d", cmd.Process.Pid) {
		t.Fatalf("Acquire while another process holds it: got %v, want a *HeldError naming pid %d", err, cmd.Process.Pid)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Acquire(path, nil)
	if err != nil {
		t.Fatalf("Acquire after the holder was killed: %v", err)
	}
	l.Close()
}
