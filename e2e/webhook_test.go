package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/events"
)

const webhookSecret = "e2e-webhook-secret"

// webhook is what the test receiver got: events with a valid signature, and
// how many requests had a bad one.
var webhook struct {
	mu     sync.Mutex
	events []api.Event
	bad    int
	down   bool // answer 503, as an endpoint that is down
}

// startWebhookReceiver serves the shared server's webhook on loopback and
// returns its URL.
func startWebhookReceiver() string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		webhook.mu.Lock()
		defer webhook.mu.Unlock()
		if webhook.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get(events.SignatureHeader) != events.Sign(webhookSecret, body) {
			webhook.bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev api.Event
		if json.Unmarshal(body, &ev) == nil {
			webhook.events = append(webhook.events, ev)
		}
	}))
	return srv.URL
}

// TestWebhook: the server posts every event, signed; while the endpoint is
// down nothing is lost, and delivery resumes in order when it is back.
func TestWebhook(t *testing.T) {
	webhook.mu.Lock()
	webhook.down = true
	webhook.mu.Unlock()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	if _, err := env.client.KillMachine(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // a retry or two fail
	webhook.mu.Lock()
	webhook.down = false
	webhook.mu.Unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		webhook.mu.Lock()
		var created, killed bool
		ordered := true
		for i, ev := range webhook.events {
			if i > 0 && ev.Seq < webhook.events[i-1].Seq { // at least once: a repeat is allowed, a step back is not
				ordered = false
			}
			if ev.MachineID == m.ID {
				created = created || ev.Type == api.EventMachineCreated
				killed = killed || ev.Type == api.EventMachineKilled
			}
		}
		bad := webhook.bad
		webhook.mu.Unlock()
		if !ordered || bad > 0 {
			t.Fatalf("webhook deliveries out of order (%v) or badly signed (%d)", !ordered, bad)
		}
		if created && killed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook did not get machine %s's created and killed events after the endpoint came back", m.ID)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
