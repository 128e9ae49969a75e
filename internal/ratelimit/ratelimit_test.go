package ratelimit

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a fake clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// step is one call of a script: after advancing the clock by wait, Allow
// of key must answer ok and, when refused, retryAfter.
type step struct {
	wait       time.Duration
	key        string
	ok         bool
	retryAfter time.Duration
}

func TestAllow(t *testing.T) {
	tests := []struct {
		name     string
		limit    Limit
		override map[string]Limit
		steps    []step
	}{
		{
			name:  "burst then refusal with the time to one token",
			limit: Limit{Rate: 2, Burst: 3},
			steps: []step{
				{key: "a", ok: true}, {key: "a", ok: true}, {key: "a", ok: true},
				{key: "a", ok: false, retryAfter: 500 * time.Millisecond},
				{wait: 200 * time.Millisecond, key: "a", ok: false, retryAfter: 300 * time.Millisecond},
				{wait: 300 * time.Millisecond, key: "a", ok: true},
				{key: "a", ok: false, retryAfter: 500 * time.Millisecond},
			},
		},
		{
			name:  "refill never passes the burst",
			limit: Limit{Rate: 10, Burst: 2},
			steps: []step{
				{key: "a", ok: true}, {key: "a", ok: true},
				{wait: time.Hour, key: "a", ok: true}, {key: "a", ok: true},
				{key: "a", ok: false, retryAfter: 100 * time.Millisecond},
			},
		},
		{
			name:  "keys have buckets of their own",
			limit: Limit{Rate: 1, Burst: 1},
			steps: []step{
				{key: "a", ok: true}, {key: "a", ok: false, retryAfter: time.Second},
				{key: "b", ok: true}, {key: "b", ok: false, retryAfter: time.Second},
				{wait: time.Second, key: "a", ok: true},
			},
		},
		{
			name:  "slow rate: retry-after in seconds",
			limit: Limit{Rate: 0.1, Burst: 1},
			steps: []step{
				{key: "a", ok: true},
				{wait: 3 * time.Second, key: "a", ok: false, retryAfter: 7 * time.Second},
				{wait: 7 * time.Second, key: "a", ok: true},
			},
		},
		{
			name:     "an override raises one key's limit",
			limit:    Limit{Rate: 1, Burst: 1},
			override: map[string]Limit{"big": {Rate: 100, Burst: 3}},
			steps: []step{
				{key: "big", ok: true}, {key: "big", ok: true}, {key: "big", ok: true},
				{key: "big", ok: false, retryAfter: 10 * time.Millisecond},
				{key: "small", ok: true}, {key: "small", ok: false, retryAfter: time.Second},
			},
		},
		{
			name:     "an override lifts the limit",
			limit:    Limit{Rate: 1, Burst: 1},
			override: map[string]Limit{"free": {}},
			steps: []step{
				{key: "free", ok: true}, {key: "free", ok: true}, {key: "free", ok: true},
			},
		},
		{
			name:     "an override limits a key when the default does not",
			override: map[string]Limit{"capped": {Rate: 1, Burst: 1}},
			steps: []step{
				{key: "capped", ok: true}, {key: "capped", ok: false, retryAfter: time.Second},
				{key: "other", ok: true}, {key: "other", ok: true},
			},
		},
		{
			name:  "burst below 1 is 1",
			limit: Limit{Rate: 4},
			steps: []step{
				{key: "a", ok: true}, {key: "a", ok: false, retryAfter: 250 * time.Millisecond},
			},
		},
		{
			name:  "no limit",
			limit: Limit{},
			steps: []step{{key: "a", ok: true}, {key: "a", ok: true}, {key: "a", ok: true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			cfg := Config{Default: tt.limit, Now: c.Now}
			if tt.override != nil {
				cfg.Override = func(key string) (Limit, bool) { l, ok := tt.override[key]; return l, ok }
			}
			l := New(cfg)
			for i, s := range tt.steps {
				c.Advance(s.wait)
				ok, ra := l.Allow(s.key)
				if ok != s.ok || ra != s.retryAfter {
					t.Fatalf("step %d: Allow(%q) = %v, %v; want %v, %v", i, s.key, ok, ra, s.ok, s.retryAfter)
				}
			}
		})
	}
}

// TestOverrideChanges: a changed override applies to a bucket that exists.
func TestOverrideChanges(t *testing.T) {
	c := newClock()
	var limit atomic.Value
	limit.Store(Limit{Rate: 1, Burst: 1})
	l := New(Config{Default: Limit{Rate: 1, Burst: 1}, Now: c.Now,
		Override: func(string) (Limit, bool) { return limit.Load().(Limit), true }})
	if ok, _ := l.Allow("team"); !ok {
		t.Fatal("first call refused")
	}
	if ok, _ := l.Allow("team"); ok {
		t.Fatal("second call at 1/s burst 1 allowed")
	}
	limit.Store(Limit{Rate: 1000, Burst: 1000})
	// The bucket takes the new limit at its next call; time before it
	// counted at the old rate.
	if ok, ra := l.Allow("team"); ok || ra != time.Millisecond {
		t.Fatalf("first call after raising the limit: %v, %v; want refused, 1ms (a token at 1000/s)", ok, ra)
	}
	c.Advance(10 * time.Millisecond) // 10 tokens at the new rate
	for i := range 10 {
		if ok, ra := l.Allow("team"); !ok {
			t.Fatalf("call %d after raising the limit refused (retry after %v)", i, ra)
		}
	}
	if ok, ra := l.Allow("team"); ok || ra != time.Millisecond {
		t.Fatalf("11th call: %v, %v; want refused, 1ms", ok, ra)
	}
}

// TestBoundedMemory: a flood of distinct keys keeps at most MaxKeys
// buckets, and the most recent key still has its own (drained) bucket.
func TestBoundedMemory(t *testing.T) {
	c := newClock()
	l := New(Config{Default: Limit{Rate: 1, Burst: 1}, MaxKeys: 100, Now: c.Now})
	for i := range 10_000 {
		key := fmt.Sprint("src-", i)
		if ok, _ := l.Allow(key); !ok {
			t.Fatalf("first call of %s refused", key)
		}
		if n := l.Len(); n > 100 {
			t.Fatalf("%d buckets after %d keys, want at most 100", n, i+1)
		}
	}
	if ok, _ := l.Allow("src-9999"); ok {
		t.Fatal("the most recent key's bucket was evicted: its second call passed")
	}
}

// TestIdleBucketsDropped: buckets that have refilled are dropped as new
// calls come, so a quiet key does not hold memory.
func TestIdleBucketsDropped(t *testing.T) {
	c := newClock()
	l := New(Config{Default: Limit{Rate: 10, Burst: 5}, Now: c.Now})
	for i := range 50 {
		l.Allow(fmt.Sprint("old-", i))
	}
	if n := l.Len(); n != 50 {
		t.Fatalf("%d buckets, want 50", n)
	}
	c.Advance(time.Second) // every bucket is full again
	for range 30 {
		l.Allow("hot")
	}
	if n := l.Len(); n != 1 {
		t.Fatalf("%d buckets after the old ones refilled, want 1 (the hot key's)", n)
	}
}

// TestConcurrent: many goroutines on few keys never let more through than
// the burst while the clock stands still (run with -race).
func TestConcurrent(t *testing.T) {
	c := newClock()
	l := New(Config{Default: Limit{Rate: 1, Burst: 50}, MaxKeys: 4, Now: c.Now})
	keys := []string{"a", "b", "c"}
	var allowed [3]atomic.Int32
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				k := (g + i) % len(keys)
				if ok, _ := l.Allow(keys[k]); ok {
					allowed[k].Add(1)
				}
			}
		}()
	}
	wg.Wait()
	for k := range keys {
		if n := allowed[k].Load(); n != 50 {
			t.Errorf("key %s: %d allowed, want the burst, 50", keys[k], n)
		}
	}
}

func TestNilLimiter(t *testing.T) {
	var l *Limiter
	if ok, ra := l.Allow("x"); !ok || ra != 0 {
		t.Fatalf("nil limiter: %v, %v; want allowed", ok, ra)
	}
	if New(Config{}) != nil {
		t.Fatal("New of no limit is not nil")
	}
}

func TestLimitSet(t *testing.T) {
	tests := []struct {
		in      string
		want    Limit
		wantErr bool
	}{
		{in: "100:500", want: Limit{Rate: 100, Burst: 500}},
		{in: "100/s:500", want: Limit{Rate: 100, Burst: 500}},
		{in: "2.5", want: Limit{Rate: 2.5, Burst: 3}},
		{in: "0", want: Limit{}},
		{in: "0:10", want: Limit{}},
		{in: "-1", wantErr: true},
		{in: "x:1", wantErr: true},
		{in: "10:0", wantErr: true},
		{in: "10:1.5", wantErr: true},
		{in: "Inf", wantErr: true},
	}
	for _, tt := range tests {
		var got Limit
		err := got.Set(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Set(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil {
			var back Limit
			if err := back.Set(got.String()); err != nil || back != got {
				t.Errorf("Set(%q).String() = %q does not parse back: %+v, %v", tt.in, got.String(), back, err)
			}
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "1", time.Millisecond: "1", time.Second: "1", time.Second + 1: "2", 2500 * time.Millisecond: "3",
	} {
		if got := RetryAfterSeconds(d); got != want {
			t.Errorf("RetryAfterSeconds(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:5555":            "192.0.2.7",
		"192.0.2.7":                 "192.0.2.7",
		"[::ffff:192.0.2.7]:1":      "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:80": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ff::1]:81":   "2001:db8:1:2::/64",
		"[fe80::1%eth0]:22":         "fe80::/64",
		"@":                         "@",
	} {
		if got := SourceKey(in); got != want {
			t.Errorf("SourceKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// The cost of a check, for the overhead budget (≤ 0.3 ms p50 for
// authentication, scope, quota and rate checks together).
func BenchmarkAllow(b *testing.B) {
	l := New(Config{Default: Limit{Rate: 1e9, Burst: 1 << 30}})
	b.Run("one key", func(b *testing.B) {
		for b.Loop() {
			l.Allow("team")
		}
	})
	b.Run("one key parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Allow("team")
			}
		})
	})
	keys := make([]string, 1<<17)
	for i := range keys {
		keys[i] = fmt.Sprint("203.0.113.", i)
	}
	b.Run("distinct keys past the cap", func(b *testing.B) {
		l := New(Config{Default: Limit{Rate: 1, Burst: 1}, MaxKeys: 1 << 16})
		i := 0
		for b.Loop() {
			l.Allow(keys[i%len(keys)])
			i++
		}
	})
}
