// Package apikey makes and checks API keys. Keys are 256-bit random tokens,
// so a plain SHA-256 is the right hash to store: it cannot be brute-forced
// and lookups stay a single indexed query.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Prefix starts every key, so leaked keys are easy to spot and scan for.
const Prefix = "ns_"

// Generate returns a new key, its hash for storage and a short display prefix.
func Generate() (key, hash, display string) {
	b := make([]byte, 32)
	rand.Read(b)
	key = Prefix + hex.EncodeToString(b)
	return key, Hash(key), key[:len(Prefix)+6]
}

// Hash returns the stored form of a key.
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// E2BPrefix starts the E2B form of a key: the same key, spelt the way
// E2B's SDKs check keys on the client (releases 2.27.0 to 2.45.0 refuse
// anything but `^e2b_[0-9a-f]+$`).
const E2BPrefix = "e2b_"

// E2BForm returns key in its E2B form ("e2b_" + the same hex).
func E2BForm(key string) string {
	if rest, ok := strings.CutPrefix(key, Prefix); ok {
		return E2BPrefix + rest
	}
	return key
}

// Canonical returns the form keys are stored in: a key in its E2B form is
// the same key as "ns_" + its hex. Anything else is returned as it is.
func Canonical(key string) string {
	if rest, ok := strings.CutPrefix(key, E2BPrefix); ok && isHex(rest) {
		return Prefix + rest
	}
	return key
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// ShownPrefix is the part of a key that is shown to tell keys apart (as
// Generate's display), or "" for a string that is not a key: of a
// string that may be a secret, nothing but a key's known prefix is kept.
func ShownPrefix(key string) string {
	key = Canonical(strings.TrimSpace(key))
	if !strings.HasPrefix(key, Prefix) || len(key) < len(Prefix)+6 || !isHex(key[len(Prefix):len(Prefix)+6]) {
		return ""
	}
	return key[:len(Prefix)+6]
}
