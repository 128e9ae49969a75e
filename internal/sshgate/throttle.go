package sshgate

import (
	"sync"
	"time"
)

// Defaults of the sign-in throttle (Config).
const (
	DefaultAuthFreeFailures    = 5
	DefaultAuthLockoutFailures = 20
	DefaultAuthBaseDelay       = 250 * time.Millisecond
	DefaultAuthMaxDelay        = 8 * time.Second
	DefaultAuthFailureWindow   = 10 * time.Minute
)

// maxStrikeEntries bounds the throttle's memory: past it, entries whose
// window has passed are dropped, then any.
const maxStrikeEntries = 1 << 16

// throttle slows down and locks out guessing. Failed sign-ins are counted
// per source address and per user name (the machine id) over a window
// that restarts with each failure: past the free ones, each failure is
// answered after a delay that doubles; past the lockout count, a source
// address is refused before its credentials are even looked at until a
// window has passed since its last failure. A user name is only slowed,
// never locked: a stranger must not be able to lock a machine's owner out.
type throttle struct {
	free, lockout int
	base, max     time.Duration
	window        time.Duration
	now           func() time.Time

	mu      sync.Mutex
	strikes map[string]strike // "ip:" + address, "user:" + name
}

type strike struct {
	n    int
	last time.Time
}

func newThrottle(cfg Config) *throttle {
	return &throttle{free: cfg.AuthFreeFailures, lockout: cfg.AuthLockoutFailures, base: cfg.AuthBaseDelay,
		max: cfg.AuthMaxDelay, window: cfg.AuthFailureWindow, now: time.Now, strikes: map[string]strike{}}
}

// countLocked is the failures of key within the window.
func (t *throttle) countLocked(key string, now time.Time) int {
	s, ok := t.strikes[key]
	if !ok || now.Sub(s.last) >= t.window {
		return 0
	}
	return s.n
}

// locked says how long the address stays locked out (0: it is not).
func (t *throttle) locked(addr string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if t.countLocked("ip:"+addr, now) < t.lockout {
		return 0
	}
	return t.strikes["ip:"+addr].last.Add(t.window).Sub(now)
}

// failed records a failed sign-in and returns how long to wait before
// answering it.
func (t *throttle) failed(addr, user string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if len(t.strikes) >= maxStrikeEntries {
		t.pruneLocked(now)
	}
	var delay time.Duration
	for _, key := range []string{"ip:" + addr, "user:" + user} {
		n := t.countLocked(key, now) + 1
		t.strikes[key] = strike{n: n, last: now}
		if over := n - t.free; over > 0 {
			d := t.max
			if over < 32 {
				d = min(t.base<<(over-1), t.max)
			}
			delay = max(delay, d)
		}
	}
	return delay
}

// succeeded forgets the address's failures: its owner got in.
func (t *throttle) succeeded(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.strikes, "ip:"+addr)
}

func (t *throttle) pruneLocked(now time.Time) {
	for k, s := range t.strikes {
		if now.Sub(s.last) >= t.window {
			delete(t.strikes, k)
		}
	}
	for k := range t.strikes {
		if len(t.strikes) < maxStrikeEntries {
			break
		}
		delete(t.strikes, k)
	}
}
