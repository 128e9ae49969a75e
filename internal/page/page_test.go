package page

import (
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

func TestLimit(t *testing.T) {
	for raw, want := range map[string]int{"": DefaultLimit, "1": 1, "1000": 1000} {
		if n, err := Limit(raw); err != nil || n != want {
			t.Errorf("Limit(%q) = %d, %v; want %d", raw, n, err, want)
		}
	}
	for _, raw := range []string{"0", "-1", "1001", "100000", "x", "1.5"} {
		if _, err := Limit(raw); errdefs.Classify(err).Code != errdefs.CodeInvalidArgument {
			t.Errorf("Limit(%q): %v, want invalid_argument", raw, err)
		}
	}
}

func TestTokens(t *testing.T) {
	s := NewScope("machines", "team_a", "running", "owner=me")
	tok := Encode(s, "2026-01-01T00:00:00Z", "mch_1")
	got, err := Decode(s, tok, 2)
	if err != nil || !slices.Equal(got, []string{"2026-01-01T00:00:00Z", "mch_1"}) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	if got, err := Decode(s, "", 2); got != nil || err != nil {
		t.Fatalf("empty token: %v %v, want the start", got, err)
	}
	for name, raw := range map[string]string{
		"forged":        "not-a-token",
		"truncated":     tok[:len(tok)-5],
		"other list":    Encode(NewScope("snapshots", "team_a", "running", "owner=me"), "x", "y"),
		"other team":    Encode(NewScope("machines", "team_b", "running", "owner=me"), "x", "y"),
		"other filters": Encode(NewScope("machines", "team_a", "paused", "owner=me"), "x", "y"),
		"wrong shape":   Encode(s, "x"),
	} {
		if _, err := Decode(s, raw, 2); errdefs.Classify(err).Code != errdefs.CodeInvalidArgument {
			t.Errorf("%s token: %v, want invalid_argument", name, err)
		}
	}
	// Filters are told apart however their values are cut.
	if NewScope("m", "t", "a", "bc").Filters == NewScope("m", "t", "ab", "c").Filters {
		t.Fatal("filters ab|c and a|bc have the same digest")
	}
}

func TestTimeIDTokens(t *testing.T) {
	s := NewScope("machines", "team_a")
	at := time.Date(2026, 12, 2, 5, 0, 0, 123456789, time.FixedZone("x", 3600))
	gotT, gotID, ok, err := DecodeTimeID(s, EncodeTimeID(s, at, "mch_1"))
	if err != nil || !ok || !gotT.Equal(at) || gotID != "mch_1" {
		t.Fatalf("round trip: %v %q %v %v, want %v mch_1", gotT, gotID, ok, err, at)
	}
	if _, _, ok, err := DecodeTimeID(s, ""); ok || err != nil {
		t.Fatalf("empty token: %v %v, want the start", ok, err)
	}
	if _, _, _, err := DecodeTimeID(s, Encode(s, "not a time", "mch_1")); errdefs.Classify(err).Code != errdefs.CodeInvalidArgument {
		t.Errorf("a token whose time does not parse: %v, want invalid_argument", err)
	}
}
