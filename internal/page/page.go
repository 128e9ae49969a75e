// Package page is the API's pagination: the limit of a page and the
// opaque next_token that carries a list's position from one page to the
// next. A token names the list, the team and the filters it was made for,
// so a token of another list, another team or other filters is refused
// instead of silently paging something else.
package page

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

const (
	// DefaultLimit is a page's size when the request gives none.
	DefaultLimit = 100
	// MaxLimit is the largest page.
	MaxLimit = 1000
)

// Limit parses a ?limit= value: empty is DefaultLimit; 1 to MaxLimit.
func Limit(raw string) (int, error) {
	if raw == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("limit %q is out of range", raw), fmt.Sprintf("give a page size from 1 to %d (default %d)", MaxLimit, DefaultLimit))
	}
	return n, nil
}

// Scope is what a token is good for: a list, a team, and a digest of the
// filters of the request that made it.
type Scope struct {
	List    string
	Team    string
	Filters string
}

// NewScope returns the scope of a list request; filters are the request's
// filter values in a fixed order.
func NewScope(list, team string, filters ...string) Scope {
	h := sha256.New()
	for _, f := range filters {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return Scope{List: list, Team: team, Filters: hex.EncodeToString(h.Sum(nil)[:8])}
}

type token struct {
	V     int      `json:"v"`
	List  string   `json:"l"`
	Team  string   `json:"t"`
	Filt  string   `json:"f"`
	After []string `json:"a"`
}

// Encode returns the token of the position after (the sort key of the
// last item of a page).
func Encode(s Scope, after ...string) string {
	b, _ := json.Marshal(token{V: 1, List: s.List, Team: s.Team, Filt: s.Filters, After: after})
	return base64.RawURLEncoding.EncodeToString(b)
}

func bad(why string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, "next_token "+why,
		"pass the next_token of the previous page of the same list with the same filters, or none to start over")
}

// Malformed is the error of a token this server did not make (also for a
// position in it that does not parse).
func Malformed() error { return bad("is not a token this server made") }

// Decode returns the position a token carries; "" is the start (nil). A
// token that is malformed or made for another scope is invalid_argument.
func Decode(s Scope, raw string, parts int) ([]string, error) {
	if raw == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return nil, Malformed()
	}
	var t token
	if err := json.Unmarshal(b, &t); err != nil || t.V != 1 || len(t.After) != parts {
		return nil, Malformed()
	}
	switch {
	case t.List != s.List:
		return nil, bad(fmt.Sprintf("belongs to another list (%s)", t.List))
	case t.Team != s.Team:
		return nil, bad("belongs to another team")
	case t.Filt != s.Filters:
		return nil, bad("was made for other filters")
	}
	return t.After, nil
}

// EncodeTimeID returns the token of a position sorted by time, then id
// (most lists: machines by creation, snapshots by creation).
func EncodeTimeID(s Scope, t time.Time, id string) string {
	return Encode(s, t.UTC().Format(time.RFC3339Nano), id)
}

// DecodeTimeID returns the position a token of EncodeTimeID carries; ok
// is false for "" (the start).
func DecodeTimeID(s Scope, raw string) (t time.Time, id string, ok bool, err error) {
	pos, err := Decode(s, raw, 2)
	if err != nil || pos == nil {
		return time.Time{}, "", false, err
	}
	if t, err = time.Parse(time.RFC3339Nano, pos[0]); err != nil {
		return time.Time{}, "", false, Malformed()
	}
	return t, pos[1], true, nil
}

// Pairs returns a map filter's pairs as "k=v", sorted: scope filters in a
// fixed order.
func Pairs(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}
