package httpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// TestUsage: GET /v1/usage answers the running machine's open span as
// JSON or CSV, grouped as asked, and refuses a bad range or grouping.
func TestUsage(t *testing.T) {
	base := newTestAPI(t)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	status, body := call(t, "GET", base+"/v1/usage?group_by=machine,team&from="+from, nil)
	if status != 200 {
		t.Fatalf("GET /v1/usage: %d %s", status, body)
	}
	var u api.Usage
	if err := json.Unmarshal(body, &u); err != nil {
		t.Fatal(err)
	}
	if len(u.Rows) != 1 || u.Rows[0].MachineID != runningID || u.Rows[0].TeamID != testTeam || u.Rows[0].RunningSeconds <= 0 ||
		u.Rows[0].VCPUSeconds != u.Rows[0].RunningSeconds || strings.Join(u.GroupBy, ",") != "team,machine" {
		t.Errorf("usage %s: want one row of %s in team %s, running, 1 vCPU, grouped by team,machine", body, runningID, testTeam)
	}
	if !u.To.After(u.From) || u.From.Format(time.RFC3339) != from {
		t.Errorf("range %v..%v, want from %s to now", u.From, u.To, from)
	}

	req, _ := http.NewRequest("GET", base+"/v1/usage?group_by=day&team_id=*", nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Accept", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	csv, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(csv)), "\n")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") || len(lines) != 2 ||
		!strings.HasPrefix(lines[0], "team_id,machine_id,day,") || !strings.HasPrefix(lines[1], ",,"+time.Now().UTC().Format(time.DateOnly)+",") {
		t.Errorf("CSV by day: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), csv)
	}

	for _, q := range []string{"from=yesterday", "to=2026-13-01T00:00:00Z", "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
		"from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z", "group_by=week", "group_by=machine,hour"} {
		status, body := call(t, "GET", base+"/v1/usage?"+q, nil)
		var e api.Error
		json.Unmarshal(body, &e)
		if status != 400 || e.Code != errdefs.CodeInvalidArgument {
			t.Errorf("GET /v1/usage?%s: %d %s, want 400 invalid_argument", q, status, body)
		}
	}
}
