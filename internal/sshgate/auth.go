package sshgate

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/internal/atomicfile"
	"nullspace.dev/nullspace/internal/errdefs"
)

// ParsePublicKey reads one authorized_keys line. It returns the key in
// authorized_keys form without its comment, its SHA256 fingerprint and the
// comment.
func ParsePublicKey(line string) (key, fingerprint, comment string, err error) {
	line = strings.TrimSpace(line)
	if line == "" || strings.Contains(line, "\n") {
		return "", "", "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSSHKeyInvalid,
			"public_key must be one line of authorized_keys form", "pass the content of a .pub file, e.g. ~/.ssh/id_ed25519.pub")
	}
	if strings.Contains(line, "PRIVATE KEY") {
		return "", "", "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSSHKeyInvalid,
			"this is a private key", "never send it anywhere: pass the public half, the .pub file")
	}
	pk, comment, options, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return "", "", "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSSHKeyInvalid,
			fmt.Sprintf("public_key is not an SSH public key: %v", err), "pass the content of a .pub file, e.g. ~/.ssh/id_ed25519.pub")
	}
	if len(options) > 0 {
		return "", "", "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSSHKeyInvalid,
			"authorized_keys options are not supported", "pass the key without options (from its type onwards)")
	}
	if _, ok := pk.(*ssh.Certificate); ok {
		return "", "", "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSSHKeyInvalid,
			"certificates are not supported", "pass the plain public key")
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))), ssh.FingerprintSHA256(pk), comment, nil
}

// loadHostKey reads the gateway's host key, generating it on first use:
// clients remember it, so it must never change by itself.
func loadHostKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		block, err := ssh.MarshalPrivateKey(priv, "nullspace ssh gateway")
		if err != nil {
			return nil, err
		}
		b = pem.EncodeToMemory(block)
		if err := atomicfile.Write(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("ssh host key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	} else if _, err := atomicfile.Private(path); err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("ssh host key %s: %w", path, err)
	}
	return signer, nil
}

// Tokens are short-lived SSH passwords for one lineage of one team,
// signed with a secret kept in the data directory: stateless (nothing to
// store or expire), and void for every other machine.
type Tokens struct{ secret []byte }

// tokenPrefix marks a token, so that a stray API key pasted as a password
// gets a clear answer.
const tokenPrefix = "nst_"

// MaxTokenTTL bounds a token's life.
const MaxTokenTTL = 24 * time.Hour

// openTokens loads (or creates) the token secret.
func openTokens(path string) (*Tokens, error) {
	b, err := atomicfile.Secret(path, 32)
	if err != nil {
		return nil, fmt.Errorf("ssh token secret: %w", err)
	}
	return &Tokens{secret: b}, nil
}

type tokenClaims struct {
	Team    string `json:"t"`
	Lineage string `json:"l"`
	Expires int64  `json:"e"` // unix seconds
}

// Issue returns a token for lineage of team that expires at exp.
func (k *Tokens) Issue(team, lineage string, exp time.Time) string {
	body, _ := json.Marshal(tokenClaims{Team: team, Lineage: lineage, Expires: exp.Unix()})
	payload := base64.RawURLEncoding.EncodeToString(body)
	return tokenPrefix + payload + "." + base64.RawURLEncoding.EncodeToString(k.mac(payload))
}

func (k *Tokens) mac(payload string) []byte {
	h := hmac.New(sha256.New, k.secret)
	h.Write([]byte(payload))
	return h.Sum(nil)
}

// verify returns a valid token's claims.
func (k *Tokens) verify(token string, now time.Time) (tokenClaims, error) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		return tokenClaims{}, errors.New("the password is not an SSH token: get one with `nullspace ssh-token ID` (POST /v1/machines/{id}/ssh-token)")
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, k.mac(payload)) {
		return tokenClaims{}, errors.New("the SSH token is not valid here (the server's secret changed, or it was altered): get a new one")
	}
	body, err := base64.RawURLEncoding.DecodeString(payload)
	var c tokenClaims
	if err != nil || json.Unmarshal(body, &c) != nil {
		return tokenClaims{}, errors.New("the SSH token is malformed: get a new one")
	}
	if now.Unix() >= c.Expires {
		return tokenClaims{}, fmt.Errorf("the SSH token expired at %s: get a new one with `nullspace ssh-token ID`",
			time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	return c, nil
}
