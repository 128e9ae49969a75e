// Package ratelimit is a keyed token-bucket limiter: one bucket per key
// (an API key's team, a source address, a machine), each refilling at its
// Limit's rate up to its burst, in bounded memory.
//
// The bucket arithmetic is golang.org/x/time/rate's; this package adds the
// keys, the per-key overrides, the retry-after of a refusal and the bound
// on memory. A full bucket is the same as no bucket (a new one starts
// full), so full buckets are dropped as they are met at the cold end of
// the recency list; past MaxKeys the least recently used bucket goes, so a
// flood of distinct keys costs a bounded table, at worst refilling the
// oldest bucket early.
package ratelimit

import (
	"container/list"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limit is a bucket's refill rate and size.
type Limit struct {
	// Rate is the tokens added per second; 0 (or less): no limit.
	Rate float64
	// Burst is the bucket's size: how many may pass at once after a quiet
	// spell. Less than 1 is taken as 1.
	Burst int
}

// Unlimited says whether l limits nothing.
func (l Limit) Unlimited() bool { return l.Rate <= 0 }

// String is the flag form, RATE:BURST ("0" when unlimited).
func (l Limit) String() string {
	if l.Unlimited() {
		return "0"
	}
	return strconv.FormatFloat(l.Rate, 'f', -1, 64) + ":" + strconv.Itoa(l.Burst)
}

// Set parses the flag form: RATE[:BURST], RATE a number per second, BURST a
// whole number (default: RATE rounded up); "0" turns the limit off. *Limit
// is a pflag.Value.
func (l *Limit) Set(s string) error {
	rs, bs, hasBurst := strings.Cut(strings.TrimSpace(s), ":")
	r, err := strconv.ParseFloat(strings.TrimSuffix(rs, "/s"), 64)
	if err != nil || r < 0 || math.IsInf(r, 0) || math.IsNaN(r) {
		return fmt.Errorf("rate %q: want RATE[:BURST], RATE a number of per second (0: no limit), e.g. 100:500", s)
	}
	if r == 0 {
		*l = Limit{}
		return nil
	}
	b := int(math.Ceil(r))
	if hasBurst {
		if b, err = strconv.Atoi(bs); err != nil || b < 1 {
			return fmt.Errorf("burst %q of %q: want a whole number of at least 1", bs, s)
		}
	}
	*l = Limit{Rate: r, Burst: b}
	return nil
}

// Type names the flag's value in help text.
func (l *Limit) Type() string { return "RATE:BURST" }

// DefaultMaxKeys bounds the buckets a Limiter keeps unless Config says
// otherwise: about 200 bytes each, so some 20 MiB at most.
const DefaultMaxKeys = 100_000

// Config configures a Limiter.
type Config struct {
	// Default is the limit of every key without an override.
	Default Limit
	// Override, if set, gives a key's own limit (ok false: Default). It
	// is asked on every Allow, so it must be cheap (a map look-up); a
	// changed answer applies to the key's bucket from then on.
	Override func(key string) (l Limit, ok bool)
	// MaxKeys bounds the buckets kept; default DefaultMaxKeys.
	MaxKeys int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Limiter is a set of token buckets by key, safe for concurrent use. A nil
// *Limiter allows everything.
type Limiter struct {
	cfg Config

	mu sync.Mutex
	// buckets by key; each element of lru is a *bucket, most recently
	// used at the front.
	buckets map[string]*list.Element
	lru     *list.List
}

type bucket struct {
	key string
	lim *rate.Limiter
}

// New returns a limiter. One whose Default is unlimited and that has no
// Override limits nothing; New returns nil for it, which is valid.
func New(cfg Config) *Limiter {
	if cfg.Default.Unlimited() && cfg.Override == nil {
		return nil
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Limiter{cfg: cfg, buckets: map[string]*list.Element{}, lru: list.New()}
}

// Allow takes a token from key's bucket. When there is none it returns
// false and how long until there is one.
func (l *Limiter) Allow(key string) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	lim := l.cfg.Default
	if l.cfg.Override != nil {
		if o, found := l.cfg.Override(key); found {
			lim = o
		}
	}
	r, burst := rate.Limit(lim.Rate), max(lim.Burst, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	l.dropFullLocked(now, 2)
	if lim.Unlimited() {
		// An override lifted the limit: the bucket, if any, is moot.
		if e, found := l.buckets[key]; found {
			l.removeLocked(e)
		}
		return true, 0
	}
	var b *bucket
	if e, found := l.buckets[key]; found {
		l.lru.MoveToFront(e)
		b = e.Value.(*bucket)
		if b.lim.Limit() != r {
			b.lim.SetLimitAt(now, r)
		}
		if b.lim.Burst() != burst {
			b.lim.SetBurstAt(now, burst)
		}
	} else {
		for len(l.buckets) >= l.cfg.MaxKeys {
			l.removeLocked(l.lru.Back())
		}
		b = &bucket{key: key, lim: rate.NewLimiter(r, burst)}
		l.buckets[key] = l.lru.PushFront(b)
	}
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	// The bucket holds less than a token: the rest comes at the rate.
	missing := 1 - b.lim.TokensAt(now)
	return false, time.Duration(math.Ceil(missing / lim.Rate * float64(time.Second)))
}

// dropFullLocked drops up to n of the least recently used buckets that are
// full again: forgetting them changes nothing.
func (l *Limiter) dropFullLocked(now time.Time, n int) {
	for range n {
		e := l.lru.Back()
		if e == nil {
			return
		}
		b := e.Value.(*bucket)
		if b.lim.TokensAt(now) < float64(b.lim.Burst()) {
			return
		}
		l.removeLocked(e)
	}
}

func (l *Limiter) removeLocked(e *list.Element) {
	delete(l.buckets, e.Value.(*bucket).key)
	l.lru.Remove(e)
}

// Len is the number of buckets kept (those not full, and full ones not yet
// dropped).
func (l *Limiter) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// RetryAfterSeconds is d as a Retry-After header value: whole seconds,
// rounded up, at least 1.
func RetryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

// SourceKey is the bucket key of a client address ("host:port" or a bare
// IP): its IP, or for IPv6 its /64, since one host commonly holds a whole
// /64 and could otherwise spread a flood over fresh addresses of it. An
// address that does not parse is its own key.
func SourceKey(addr string) string {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
