package lease

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// recorder collects fired ids in order.
type recorder struct {
	mu  sync.Mutex
	ids []string
	ch  chan string
}

func newRecorder() *recorder { return &recorder{ch: make(chan string, 100)} }

func (r *recorder) fire(id string) {
	r.mu.Lock()
	r.ids = append(r.ids, id)
	r.mu.Unlock()
	r.ch <- id
}

func (r *recorder) wait(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case id := <-r.ch:
			got = append(got, id)
		case <-time.After(5 * time.Second):
			t.Fatalf("fired %v, want %d", got, n)
		}
	}
	return got
}

func start(t *testing.T, r *recorder) *Scheduler {
	s := New(r.fire)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func TestOrderMoveCancel(t *testing.T) {
	r := newRecorder()
	s := start(t, r)
	now := time.Now()
	s.Set("c", now.Add(90*time.Millisecond))
	s.Set("a", now.Add(30*time.Millisecond))
	s.Set("b", now.Add(60*time.Millisecond))
	s.Set("moved", now.Add(10*time.Millisecond))
	s.Set("moved", now.Add(120*time.Millisecond)) // a refresh moves it later
	s.Set("gone", now.Add(20*time.Millisecond))
	s.Cancel("gone")
	s.Set("past", now.Add(-time.Hour)) // fires at once
	got := r.wait(t, 5)
	want := []string{"past", "a", "b", "c", "moved"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	select {
	case id := <-r.ch:
		t.Fatalf("fired %s after all deadlines", id)
	case <-time.After(50 * time.Millisecond):
	}
	if s.Len() != 0 {
		t.Fatalf("Len = %d after firing all", s.Len())
	}
}

func TestFiresOnce(t *testing.T) {
	r := newRecorder()
	s := start(t, r)
	s.Set("x", time.Now())
	r.wait(t, 1)
	if _, ok := s.Deadline("x"); ok {
		t.Fatal("fired deadline still scheduled")
	}
	select {
	case <-r.ch:
		t.Fatal("fired twice")
	case <-time.After(50 * time.Millisecond):
	}
}

// BenchmarkSetFire10k schedules 10,000 leases and fires them all.
func BenchmarkSetFire10k(b *testing.B) {
	for range b.N {
		var wg sync.WaitGroup
		wg.Add(10000)
		s := New(func(string) { wg.Done() })
		ctx, cancel := context.WithCancel(context.Background())
		go s.Run(ctx)
		now := time.Now()
		for i := range 10000 {
			s.Set(fmt.Sprintf("m%d", i), now.Add(time.Duration(i%100)*time.Microsecond))
		}
		wg.Wait()
		cancel()
	}
}
