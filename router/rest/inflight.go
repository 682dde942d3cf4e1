package rest

import (
	"context"
	"sync"
)

// lane is a source's way into the sink. It runs the source's deliveries one
// at a time, as pgcourier.Sink requires, and tells requests that wait for an
// earlier upload of the source when one made progress.
type lane struct {
	sem chan struct{} // full while a delivery of the source runs

	mu   sync.Mutex
	done chan struct{} // closed, then replaced, when a delivery made progress
}

func newLane() *lane {
	return &lane{sem: make(chan struct{}, 1), done: make(chan struct{})}
}

// acquire waits until no other delivery of the source runs, or ctx is done.
func (l *lane) acquire(ctx context.Context) error {
	select {
	case l.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release lets the next delivery of the source run.
func (l *lane) release() { <-l.sem }

// progressed returns a channel that is closed when a delivery of the source
// makes progress after this call.
func (l *lane) progressed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.done
}

// signal wakes the requests waiting for progress of the source.
func (l *lane) signal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.done)
	l.done = make(chan struct{})
}
