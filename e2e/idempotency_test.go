package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestIdempotentCreate: a create whose connection is dropped right after
// the request is sent, retried with the same Idempotency-Key, gets the
// machine the first made (marked replayed), and exactly one machine
// exists; the key with another body is refused.
func TestIdempotentCreate(t *testing.T) {
	ctx := t.Context()
	key := "e2e-" + randomSuffix()
	tag := "idem-" + randomSuffix()
	body := `{"template":"minimal","metadata":{"test":"` + tag + `"}}`

	// The first attempt: sent, then the connection is dropped unanswered.
	conn, err := net.Dial("tcp", env.inst.Addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1/machines HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"+
		"Idempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s", env.inst.Addr, env.key, key, len(body), body)
	// Dropped once the server is making the machine (its row is listed),
	// so that the retry is certainly the second.
	deadline := time.Now().Add(10 * time.Second)
	for {
		made, err := env.client.ListMachines(ctx, client.ListOptions{Metadata: map[string]string{"test": tag}})
		if err == nil && len(made) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first create made no machine: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn.Close()

	send := func(body string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+env.inst.Addr+"/v1/machines", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+env.key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, b := send(body)
	var m api.Machine
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &m) != nil || m.ID == "" {
		t.Fatalf("the retry: %d %s", resp.StatusCode, b)
	}
	t.Cleanup(func() { env.client.KillMachine(ctx, m.ID) })
	if resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the retry was not a replay: headers %v", resp.Header)
	}
	again, b2 := send(body)
	if again.StatusCode != http.StatusCreated || string(b2) != string(b) {
		t.Fatalf("a second retry: %d %s, want the same answer %s", again.StatusCode, b2, b)
	}
	made, err := env.client.ListMachines(ctx, client.ListOptions{Metadata: map[string]string{"test": tag}})
	if err != nil || len(made) != 1 || made[0].ID != m.ID {
		t.Fatalf("machines made: %+v %v; want exactly %s", made, err, m.ID)
	}
	if got := run(t, m.ID, "echo ok"); got != "ok\n" {
		t.Fatalf("the machine answers %q", got)
	}
	other, b3 := send(`{"template":"base"}`)
	if other.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(b3), "idempotency_key_reused") {
		t.Fatalf("the key with another body: %d %s", other.StatusCode, b3)
	}
}
