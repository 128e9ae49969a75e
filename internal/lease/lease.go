// Package lease schedules machine deadlines: one timer for all of them, a
// heap ordered by deadline, so that 10,000 leases cost one goroutine and
// O(log n) per change.
package lease

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// Scheduler calls fire(id) once when id's deadline passes. Deadlines are
// set, moved and cancelled at any time from any goroutine; a deadline in
// the past fires at once. fire runs on the scheduler's goroutine and must
// not block (start a goroutine for slow work).
type Scheduler struct {
	fire func(id string)

	mu    sync.Mutex
	items map[string]*item
	queue queue
	wake  chan struct{}
}

// New returns a scheduler; Run makes it fire.
func New(fire func(id string)) *Scheduler {
	return &Scheduler{fire: fire, items: map[string]*item{}, wake: make(chan struct{}, 1)}
}

// Set schedules id at at, replacing its previous deadline.
func (s *Scheduler) Set(id string, at time.Time) {
	s.mu.Lock()
	if it, ok := s.items[id]; ok {
		it.at = at
		heap.Fix(&s.queue, it.index)
	} else {
		it := &item{id: id, at: at}
		s.items[id] = it
		heap.Push(&s.queue, it)
	}
	s.mu.Unlock()
	s.poke()
}

// Cancel removes id's deadline, if it has one.
func (s *Scheduler) Cancel(id string) {
	s.mu.Lock()
	if it, ok := s.items[id]; ok {
		heap.Remove(&s.queue, it.index)
		delete(s.items, id)
	}
	s.mu.Unlock()
	s.poke()
}

// Deadline returns id's deadline.
func (s *Scheduler) Deadline(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[id]
	if !ok {
		return time.Time{}, false
	}
	return it.at, true
}

// Len is the number of scheduled deadlines.
func (s *Scheduler) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run fires deadlines until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		due, next := s.pop(time.Now())
		for _, id := range due {
			s.fire(id)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// pop removes the deadlines due at now and returns them with the next one.
func (s *Scheduler) pop(now time.Time) (due []string, next time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 && !s.queue[0].at.After(now) {
		it := heap.Pop(&s.queue).(*item)
		delete(s.items, it.id)
		due = append(due, it.id)
	}
	if len(s.queue) > 0 {
		next = s.queue[0].at
	}
	return due, next
}

type item struct {
	id    string
	at    time.Time
	index int
}

// queue is a min-heap of items by deadline.
type queue []*item

func (q queue) Len() int           { return len(q) }
func (q queue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q queue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *queue) Push(x any) {
	it := x.(*item)
	it.index = len(*q)
	*q = append(*q, it)
}
func (q *queue) Pop() any {
	old := *q
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return it
}
