// Package apikey makes and checks API keys. Keys are 256-bit random tokens,
// so a plain SHA-256 is the right hash to store: it cannot be brute-forced
// and lookups stay a single indexed query.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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
