package edge

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"nullspace.dev/nullspace/internal/atomicfile"
)

// A machine URL names a port of a lineage in one DNS label (RFC 1123:
// lower-case letters, digits, hyphens; at most 63 bytes), so that wildcard
// DNS and a wildcard certificate cover every URL, and so that the URL is a
// base any path and query can be appended to:
//
//	{port}-{lineage}                 public ports (no signature)
//	{port}-{lineage}-{sig}           signed, no expiry
//	{port}-{lineage}-{exp}-{sig}     signed, expires at exp
//
// lineage is the lineage id without its "mch_" prefix (20 hex digits; the
// underscore cannot appear in a host name), exp the expiry in Unix seconds
// in base 36, and sig the first 120 bits of HMAC-SHA256(secret, v1 ‖
// lineage ‖ port ‖ exp) in lower-case base32 (24 characters). The longest
// label is 5+1+20+1+7+1+24 = 59 bytes.

const (
	lineagePrefix = "mch_"
	lineageHexLen = 20
	sigBytes      = 15 // 120 bits
)

var sigEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// label is a parsed machine URL label.
type label struct {
	Port      int
	LineageID string    // with its mch_ prefix
	Expires   time.Time // zero: never
	Sig       string    // empty: unsigned
}

// String formats l (with its Sig) as a host label.
func (l label) String() string {
	parts := []string{strconv.Itoa(l.Port), strings.TrimPrefix(l.LineageID, lineagePrefix)}
	if !l.Expires.IsZero() {
		parts = append(parts, strconv.FormatInt(l.Expires.Unix(), 36))
	}
	if l.Sig != "" {
		parts = append(parts, l.Sig)
	}
	return strings.Join(parts, "-")
}

// errMalformed is a label that is not a machine URL at all.
var errMalformed = errors.New("malformed machine URL")

// parseLabel parses a host label; it checks the syntax only (ports are
// checked by checkPort, signatures by keys.verify).
func parseLabel(s string) (label, error) {
	parts := strings.Split(strings.ToLower(s), "-")
	if len(parts) < 2 || len(parts) > 4 {
		return label{}, errMalformed
	}
	var l label
	port, err := strconv.Atoi(parts[0])
	if err != nil || parts[0] == "" || parts[0][0] == '0' || len(parts[0]) > 5 || strings.ContainsAny(parts[0], "+-") {
		return label{}, fmt.Errorf("%w: %q is not a port number", errMalformed, parts[0])
	}
	l.Port = port
	lin := parts[1]
	if len(lin) != lineageHexLen {
		return label{}, errMalformed
	}
	if _, err := hex.DecodeString(lin); err != nil {
		return label{}, errMalformed
	}
	l.LineageID = lineagePrefix + lin
	switch len(parts) {
	case 3:
		l.Sig = parts[2]
	case 4:
		exp, err := strconv.ParseInt(parts[2], 36, 64)
		if err != nil || exp <= 0 {
			return label{}, errMalformed
		}
		l.Expires = time.Unix(exp, 0)
		l.Sig = parts[3]
	}
	if len(parts) > 2 && len(l.Sig) != sigEncoding.EncodedLen(sigBytes) {
		return label{}, errMalformed
	}
	return l, nil
}

// lineageLabelable says whether a lineage id can be put in a label.
func lineageLabelable(id string) bool {
	hexPart, ok := strings.CutPrefix(id, lineagePrefix)
	if !ok || len(hexPart) != lineageHexLen || strings.ToLower(hexPart) != hexPart {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

// Keys holds the server secret URLs are signed with. It lives in a file
// (32 random bytes, hex, mode 0600) created on first start; RotateSecret
// writes a new one, which a running server picks up within a second, and
// from then on every URL signed with the old one is refused.
type Keys struct {
	path string

	mu      sync.Mutex
	key     []byte
	checked time.Time // when the file was last looked at
	modTime time.Time
	size    int64
	inode   uint64
}

// keysRecheck is how often the secret file is looked at for a rotation.
const keysRecheck = time.Second

// OpenKeys reads the secret at path, creating it if it does not exist.
func OpenKeys(path string) (*Keys, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := RotateSecret(path); err != nil {
			return nil, err
		}
	}
	k := &Keys{path: path}
	if err := k.loadLocked(); err != nil {
		return nil, err
	}
	return k, nil
}

// RotateSecret writes a new secret to path atomically (0600). Every URL
// signed with the old secret stops working.
func RotateSecret(path string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	return atomicfile.Write(path, []byte(hex.EncodeToString(b)+"\n"), 0o600)
}

func (k *Keys) loadLocked() error {
	fi, err := atomicfile.Private(k.path)
	if err != nil {
		return fmt.Errorf("edge secret: %w", err)
	}
	b, err := os.ReadFile(k.path)
	if err != nil {
		return fmt.Errorf("edge secret: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) < 16 {
		return fmt.Errorf("edge secret %s is not at least 16 hex-encoded bytes: rotate it with `nullspace edge rotate-secret`", k.path)
	}
	k.key, k.modTime, k.size, k.inode, k.checked = key, fi.ModTime(), fi.Size(), inodeOf(fi), time.Now()
	return nil
}

func inodeOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// current returns the secret, reloading it if the file changed (looked at
// no more than once per keysRecheck). A file that became unreadable keeps
// the last good secret.
func (k *Keys) current() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.checked) >= keysRecheck {
		k.checked = time.Now()
		if fi, err := os.Stat(k.path); err == nil && (!fi.ModTime().Equal(k.modTime) || fi.Size() != k.size || inodeOf(fi) != k.inode) {
			k.loadLocked()
		}
	}
	return k.key
}

// sign returns the signature of l (its Sig ignored).
func (k *Keys) sign(l label) string {
	var exp int64
	if !l.Expires.IsZero() {
		exp = l.Expires.Unix()
	}
	mac := hmac.New(sha256.New, k.current())
	fmt.Fprintf(mac, "nullspace-edge-v1\x00%s\x00%d\x00%d", l.LineageID, l.Port, exp)
	return sigEncoding.EncodeToString(mac.Sum(nil)[:sigBytes])
}

// verify reports whether l carries a valid signature, in constant time.
func (k *Keys) verify(l label) bool {
	if l.Sig == "" {
		return false
	}
	return hmac.Equal([]byte(k.sign(l)), []byte(l.Sig))
}
