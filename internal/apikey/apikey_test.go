package apikey

import (
	"regexp"
	"testing"
)

// TestE2BForm: a key's E2B form passes the check E2B's SDKs 2.27.0 to
// 2.45.0 make on the client, and names the same key.
func TestE2BForm(t *testing.T) {
	key, hash, _ := Generate()
	e2b := E2BForm(key)
	if !regexp.MustCompile(`^e2b_[0-9a-f]+$`).MatchString(e2b) {
		t.Fatalf("E2B form %q does not pass E2B's client-side check", e2b)
	}
	if Hash(Canonical(e2b)) != hash || Hash(Canonical(key)) != hash {
		t.Fatalf("the E2B form does not name the same key")
	}
	for _, other := range []string{"e2b_", "e2b_XYZ", "e2b_" + key, "ns_zz", "garbage"} {
		if got := Canonical(other); got != other {
			t.Errorf("Canonical(%q) = %q, want it unchanged", other, got)
		}
	}
}
