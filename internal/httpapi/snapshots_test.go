package httpapi

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// TestSnapshotNames: snapshots carry their name; the list filters by it;
// the name goes where the id does; a taken or invalid name is refused
// before the machine is touched; a delete frees the name.
func TestSnapshotNames(t *testing.T) {
	base, db := newTestAPIStore(t)
	for i, sn := range []store.Snapshot{
		{ID: "snp_a", TeamID: testTeam, Name: "web"},
		{ID: "snp_b", TeamID: testTeam},
		{ID: "snp_c", TeamID: "other-team", Name: "db"},
	} {
		sn.Kind, sn.State, sn.MachineID, sn.LineageID, sn.Template = api.SnapshotReusable, store.SnapshotReady, runningID, runningID, "base"
		sn.CreatedAt = time.Now().Add(time.Duration(i) * time.Second)
		if err := db.CreateSnapshot(t.Context(), &sn); err != nil {
			t.Fatal(err)
		}
	}
	list := func(query string) []string {
		t.Helper()
		status, b := call(t, "GET", base+"/v1/snapshots"+query, nil)
		var l api.SnapshotList
		if err := json.Unmarshal(b, &l); status != 200 || err != nil {
			t.Fatalf("list %s: %d %s", query, status, b)
		}
		var out []string
		for _, sn := range l.Snapshots {
			out = append(out, sn.ID+":"+sn.Name)
		}
		return out
	}
	for _, c := range []struct{ query, want string }{
		{"", "snp_a:web snp_b:"},
		{"?name=web", "snp_a:web"},
		{"?name=db", ""}, // another team's
		{"?name=nope", ""},
	} {
		if got := strings.Join(list(c.query), " "); got != c.want {
			t.Errorf("list %q: %q, want %q", c.query, got, c.want)
		}
	}
	var sn api.Snapshot
	if status, b := call(t, "GET", base+"/v1/snapshots/web", nil); status != 200 || json.Unmarshal(b, &sn) != nil || sn.ID != "snp_a" || sn.Name != "web" {
		t.Fatalf("get by name: %d %s", status, b)
	}
	if status, _ := call(t, "GET", base+"/v1/snapshots/db", nil); status != 404 {
		t.Fatalf("get another team's snapshot by name: %d, want 404", status)
	}

	snapshots := base + "/v1/machines/" + runningID + "/snapshots"
	for _, c := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"name":"web"}`, 409, errdefs.CodeSnapshotNameExists},
		{`{"name":"Web Server"}`, 400, errdefs.CodeInvalidArgument},
		{`{"name":"snp_x"}`, 400, errdefs.CodeInvalidArgument},
		{`{"nmae":"x"}`, 400, errdefs.CodeInvalidArgument},
	} {
		status, b := call(t, "POST", snapshots, strings.NewReader(c.body))
		var e api.Error
		if json.Unmarshal(b, &e); status != c.status || e.Code != c.code || e.SuggestedAction == "" {
			t.Errorf("snapshot %s: %d %s, want %d %s with a suggested action", c.body, status, b, c.status, c.code)
		}
	}

	if status, b := call(t, "DELETE", base+"/v1/snapshots/web", nil); status != 204 {
		t.Fatalf("delete by name: %d %s", status, b)
	}
	if got := list("?name=web"); len(got) != 0 {
		t.Fatalf("after the delete, named web: %v", got)
	}
	if _, err := db.GetSnapshotByName(t.Context(), testTeam, "web"); err == nil {
		t.Fatal("the deleted snapshot's name is still taken")
	}
}
