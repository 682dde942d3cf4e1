package router_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/router"
)

// testSource is the node whose outbox the tests ship.
const testSource = "laptop-1"

var (
	_ router.Outbox  = (*fakeOutbox)(nil)
	_ pgcourier.Sink = (*fakeSink)(nil)
)

// key identifies a batch of testSource.
type key struct {
	Epoch int64
	Seq   uint64
}

func (k key) String() string { return fmt.Sprintf("%d/%d", k.Epoch, k.Seq) }

func (k key) less(o key) bool { return k.Epoch < o.Epoch || k.Epoch == o.Epoch && k.Seq < o.Seq }

func compareKeys(a, b key) int {
	return cmp.Or(cmp.Compare(a.Epoch, b.Epoch), cmp.Compare(a.Seq, b.Seq))
}

// keys returns the batches from..to of epoch, in order; nil when to < from.
func keys(epoch int64, from, to uint64) []key {
	var ks []key
	for s := from; s <= to; s++ {
		ks = append(ks, key{epoch, s})
	}
	return ks
}

// payload is the encoded batch the fake outbox holds for k: its identity,
// padded to size bytes, so that a receiver can tell a mixed-up parcel.
func payload(k key, size int) []byte {
	b := []byte(fmt.Sprintf("%s %s ", testSource, k))
	if len(b) < size {
		b = append(b, bytes.Repeat([]byte{'.'}, size-len(b))...)
	}
	return b
}

// fakeOutbox is an in-memory router.Outbox with the semantics of
// capture.Outbox. It is safe for concurrent use. It can be made to fail,
// and it checks that nothing is acknowledged before the final destination
// applied it.
type fakeOutbox struct {
	size int // bytes of each batch added

	mu       sync.Mutex
	batches  []*outboxBatch // ordered by (epoch, seq)
	routes   map[string]routeState
	failing  bool           // every call fails
	failNext map[string]int // method → how many of its next calls fail
	failures int            // calls that failed
	calls    map[string]int // method → calls
	reopened []key          // the arguments of every Reopen
	// applied reports whether the final destination holds batch k; nil
	// when not checked.
	applied  func(k key) bool
	problems []string
}

type outboxBatch struct {
	key
	data    []byte
	acked   bool
	ackedAt time.Time
	relayed bool
}

// routeState is what RecordRoute recorded for one route, as the
// pgcourier.route_state row holds it.
type routeState struct {
	Target      string
	LastSeq     uint64
	Successes   int
	LastError   string
	Errors      int
	NeedsAction bool // the last error wraps pgcourier.ErrRejected
}

// newFakeOutbox returns an empty outbox whose acknowledgements are checked
// against up (when not nil). Problems it saw fail t at the end.
func newFakeOutbox(t *testing.T, up *upstream) *fakeOutbox {
	t.Helper()
	o := &fakeOutbox{
		size:     100,
		routes:   map[string]routeState{},
		failNext: map[string]int{},
		calls:    map[string]int{},
	}
	if up != nil {
		o.applied = func(k key) bool { return up.holds(testSource, k) }
	}
	t.Cleanup(func() {
		for _, p := range o.problemList() {
			t.Error(p)
		}
	})
	return o
}

// add appends batches from..to of epoch.
func (o *fakeOutbox) add(epoch int64, from, to uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range keys(epoch, from, to) {
		o.batches = append(o.batches, &outboxBatch{key: k, data: payload(k, o.size)})
	}
	slices.SortStableFunc(o.batches, func(a, b *outboxBatch) int { return compareKeys(a.key, b.key) })
}

// ackedBefore marks the batches of epoch up to seq (and of earlier epochs)
// acknowledged at time at, without checking them: the state a test starts
// from.
func (o *fakeOutbox) ackedBefore(epoch int64, seq uint64, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, b := range o.batches {
		if !b.acked && !(key{epoch, seq}).less(b.key) {
			b.acked, b.ackedAt = true, at
		}
	}
}

// drop deletes the batches of epoch up to seq, as a trim long ago did.
func (o *fakeOutbox) drop(epoch int64, seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.batches = slices.DeleteFunc(o.batches, func(b *outboxBatch) bool { return b.Epoch == epoch && b.Seq <= seq })
}

// setFailing makes every call fail, or none.
func (o *fakeOutbox) setFailing(on bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failing = on
}

// failCalls makes the next n calls of method fail.
func (o *fakeOutbox) failCalls(method string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failNext[method] = n
}

// enter counts a call of method and says whether it fails. o.mu is held.
func (o *fakeOutbox) enter(ctx context.Context, method string) error {
	o.calls[method]++
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if o.failing || o.failNext[method] > 0 {
		if o.failNext[method] > 0 {
			o.failNext[method]--
		}
		o.failures++
		return fmt.Errorf("%s: outbox database: connection reset by peer", method)
	}
	return nil
}

func (o *fakeOutbox) Pending(ctx context.Context, epoch int64, seq uint64, max, maxBytes int) ([]pgcourier.Parcel, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enter(ctx, "Pending"); err != nil {
		return nil, err
	}
	from := key{epoch, seq}
	var parcels []pgcourier.Parcel
	size := 0
	for _, b := range o.batches {
		if b.acked || b.key.less(from) {
			continue
		}
		if len(parcels) == max {
			break
		}
		if n := len(parcels); n > 0 && (b.Epoch != parcels[0].Epoch || b.Seq != parcels[n-1].Seq+1 || size+len(b.data) > maxBytes) {
			break
		}
		parcels = append(parcels, pgcourier.Parcel{Source: testSource, Epoch: b.Epoch, Seq: b.Seq, Rows: 1, Data: slices.Clone(b.data)})
		size += len(b.data)
	}
	return parcels, nil
}

func (o *fakeOutbox) Acknowledge(ctx context.Context, epoch int64, seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enter(ctx, "Acknowledge"); err != nil {
		return err
	}
	now := time.Now()
	for _, b := range o.batches {
		if b.acked || !(b.Epoch == epoch && b.Seq <= seq) {
			continue
		}
		if o.applied != nil && !o.applied(b.key) {
			o.problems = append(o.problems, fmt.Sprintf("Acknowledge(%d, %d) acknowledged batch %v, which the final destination has not applied", epoch, seq, b.key))
		}
		b.acked, b.ackedAt = true, now
	}
	return nil
}

func (o *fakeOutbox) Relayed(ctx context.Context, epoch int64, seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enter(ctx, "Relayed"); err != nil {
		return err
	}
	for _, b := range o.batches {
		if !b.relayed && !b.acked && b.Epoch == epoch && b.Seq <= seq {
			b.relayed = true
		}
	}
	return nil
}

func (o *fakeOutbox) Reopen(ctx context.Context, epoch int64, seq uint64) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enter(ctx, "Reopen"); err != nil {
		return false, err
	}
	o.reopened = append(o.reopened, key{epoch, seq})
	held := slices.ContainsFunc(o.batches, func(b *outboxBatch) bool { return b.key == key{epoch, seq} })
	if !held {
		return false, nil
	}
	for _, b := range o.batches {
		if b.acked && b.Epoch == epoch && b.Seq >= seq {
			b.acked, b.ackedAt = false, time.Time{}
		}
	}
	return true, nil
}

func (o *fakeOutbox) Trim(ctx context.Context, retention time.Duration) (int64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enter(ctx, "Trim"); err != nil {
		return 0, err
	}
	cutoff := time.Now().Add(-retention)
	n := len(o.batches)
	o.batches = slices.DeleteFunc(o.batches, func(b *outboxBatch) bool { return b.acked && b.ackedAt.Before(cutoff) })
	return int64(n - len(o.batches)), nil
}

func (o *fakeOutbox) RecordRoute(ctx context.Context, route, target string, seq uint64, failure error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enter(ctx, "RecordRoute"); err != nil {
		return err
	}
	st := o.routes[route]
	st.Target = target
	if failure == nil {
		st.LastSeq = seq
		st.Successes++
	} else {
		st.LastError = failure.Error()
		st.Errors++
		st.NeedsAction = errors.Is(failure, pgcourier.ErrRejected)
	}
	o.routes[route] = st
	return nil
}

// held returns the batches the outbox holds, in order.
func (o *fakeOutbox) held() []key { return o.filter(func(*outboxBatch) bool { return true }) }

// acked returns the acknowledged batches, in order.
func (o *fakeOutbox) acked() []key { return o.filter(func(b *outboxBatch) bool { return b.acked }) }

// pending returns the batches not acknowledged, in order.
func (o *fakeOutbox) pending() []key { return o.filter(func(b *outboxBatch) bool { return !b.acked }) }

// relayed returns the pending batches a relay holds, in order.
func (o *fakeOutbox) relayed() []key {
	return o.filter(func(b *outboxBatch) bool { return b.relayed && !b.acked })
}

func (o *fakeOutbox) filter(keep func(*outboxBatch) bool) []key {
	o.mu.Lock()
	defer o.mu.Unlock()
	var ks []key
	for _, b := range o.batches {
		if keep(b) {
			ks = append(ks, b.key)
		}
	}
	return ks
}

// allAcked reports whether the outbox holds batches and all of them are
// acknowledged.
func (o *fakeOutbox) allAcked() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, b := range o.batches {
		if !b.acked {
			return false
		}
	}
	return len(o.batches) > 0
}

func (o *fakeOutbox) route(name string) routeState {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.routes[name]
}

func (o *fakeOutbox) callCount(method string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.calls[method]
}

func (o *fakeOutbox) failureCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failures
}

func (o *fakeOutbox) reopens() []key {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.reopened)
}

func (o *fakeOutbox) problemList() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.problems)
}

// upstream is the exactly-once applier every route ends in, as apply.Writer
// decides: per source an epoch and the last seq applied from it; a batch
// at or below it is a duplicate, one beyond the next is a gap, and a new
// epoch starts at seq 1 only. It is safe for concurrent use.
type upstream struct {
	mu      sync.Mutex
	sources map[string]*sourceState
	log     []key // every batch of testSource applied, in order
}

type sourceState struct {
	epoch   int64
	applied uint64
	finals  map[int64]uint64 // the last seq applied of each replaced epoch
}

// faults are what a sink makes of batches that would apply: it blocks or
// refuses the one at a seq (0: none).
type faults struct {
	blockAt    uint64
	blockErr   string
	retryAfter time.Duration
	refuseAt   uint64
	refuseErr  string
}

func newUpstream() *upstream { return &upstream{sources: map[string]*sourceState{}} }

func (u *upstream) state(source string) *sourceState {
	st := u.sources[source]
	if st == nil {
		st = &sourceState{finals: map[int64]uint64{}}
		u.sources[source] = st
	}
	return st
}

// restore sets the position of testSource, as a restore from a backup
// would: batches after seq of epoch are lost.
func (u *upstream) restore(epoch int64, seq uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.state(testSource)
	st.epoch, st.applied = epoch, seq
}

// apply applies p if it is the next batch of its source and f lets it.
func (u *upstream) apply(p pgcourier.Parcel, f faults) pgcourier.Receipt {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.state(p.Source)
	rc := pgcourier.Receipt{Source: p.Source, Epoch: p.Epoch, Seq: p.Seq}
	switch {
	case st.epoch == 0 || p.Epoch > st.epoch:
		if p.Seq != 1 {
			rc.Outcome, rc.NextSeq = pgcourier.Gap, 1
			return rc
		}
	case p.Epoch == st.epoch:
		rc.AppliedSeq, rc.NextSeq = st.applied, st.applied+1
		switch {
		case p.Seq <= st.applied:
			rc.Outcome = pgcourier.Duplicate
			return rc
		case p.Seq > st.applied+1:
			rc.Outcome = pgcourier.Gap
			return rc
		}
	default:
		final, ok := st.finals[p.Epoch]
		rc.AppliedSeq, rc.NextSeq = final, st.applied+1
		if ok && p.Seq <= final {
			rc.Outcome = pgcourier.Duplicate
		} else {
			rc.Outcome = pgcourier.Refused
			rc.Error = fmt.Sprintf("batch of a replaced epoch: epoch %d of source %s was replaced by epoch %d", p.Epoch, p.Source, st.epoch)
		}
		return rc
	}
	// p is the next batch.
	switch {
	case f.blockAt != 0 && p.Seq == f.blockAt:
		rc.Outcome, rc.Error, rc.RetryAfter = pgcourier.Blocked, f.blockErr, f.retryAfter
		return rc
	case f.refuseAt != 0 && p.Seq == f.refuseAt:
		rc.Outcome, rc.Error = pgcourier.Refused, f.refuseErr
		return rc
	}
	if st.epoch != 0 && p.Epoch != st.epoch {
		st.finals[st.epoch] = st.applied
	}
	st.epoch, st.applied = p.Epoch, p.Seq
	if p.Source == testSource {
		u.log = append(u.log, key{p.Epoch, p.Seq})
	}
	rc.Outcome, rc.AppliedSeq, rc.NextSeq = pgcourier.Applied, p.Seq, p.Seq+1
	return rc
}

// progress returns the position of source.
func (u *upstream) progress(source string) pgcourier.Progress {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.state(source)
	return pgcourier.Progress{Source: source, Epoch: st.epoch, AppliedSeq: st.applied, StoredSeq: st.applied}
}

// holds reports whether batch k of source is applied, as the upstream
// stands now.
func (u *upstream) holds(source string, k key) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.state(source)
	switch {
	case k.Epoch == st.epoch:
		return k.Seq <= st.applied
	case k.Epoch < st.epoch:
		final, ok := st.finals[k.Epoch]
		return ok && k.Seq <= final
	}
	return false
}

// applied returns every batch of testSource applied, in the order applied.
func (u *upstream) applied() []key {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.log)
}

// appliedCount returns how many batches of testSource were applied.
func (u *upstream) appliedCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.log)
}

// sinkMode is how a fake sink's link fares.
type sinkMode int

const (
	linkUp       sinkMode = iota
	linkDown              // the receiver cannot be reached: errors wrap pgcourier.ErrUnreachable
	linkErroring          // the receiver answers, with an error (an HTTP 500)
)

// fakeSink is a route to an upstream: the applier itself or, with relay
// set, a relay that stores parcels and forwards them when told. It is safe
// for concurrent use, and it checks the pgcourier.Sink contract from the
// caller's side.
type fakeSink struct {
	name string
	up   *upstream

	mu          sync.Mutex
	mode        sinkMode
	progressErr bool // in linkErroring mode, Progress fails too
	faults      faults
	relay       bool
	stored      map[key]pgcourier.Parcel // what the relay holds
	delay       time.Duration            // how long each delivery takes
	maxBytes    int                      // if set, a delivery over it is refused as too large
	loseReplies int                      // how many of the next deliveries apply but lose their answer
	mute        bool                     // deliveries answer neither receipts nor an error
	entered     chan struct{}            // told of every delivery that starts, if not nil
	inflight    int
	deliveries  []delivery
	progresses  int
	problems    []string
}

// delivery is one call of Deliver.
type delivery struct {
	at      time.Time
	given   time.Duration // until the context's deadline, as the call began; 0 without one
	parcels []key
	bytes   int
	done    bool          // Deliver returned
	took    time.Duration // until it returned
	err     error         // what it returned
}

// newFakeSink returns a working route named name to up. Problems it saw
// fail t at the end.
func newFakeSink(t *testing.T, name string, up *upstream) *fakeSink {
	t.Helper()
	s := &fakeSink{name: name, up: up, stored: map[key]pgcourier.Parcel{}}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, p := range s.problems {
			t.Errorf("%s: %s", s.name, p)
		}
	})
	return s
}

// newRelay returns a relay named name that forwards to up.
func newRelay(t *testing.T, name string, up *upstream) *fakeSink {
	t.Helper()
	s := newFakeSink(t, name, up)
	s.relay = true
	return s
}

func (s *fakeSink) route() router.Route {
	return router.Route{Name: s.name, Target: "fake://" + s.name, Sink: s}
}

func (s *fakeSink) setMode(m sinkMode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode = m
}

func (s *fakeSink) setFaults(f faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

func (s *fakeSink) Deliver(ctx context.Context, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	s.mu.Lock()
	d := delivery{at: time.Now()}
	if dl, ok := ctx.Deadline(); ok {
		d.given = time.Until(dl)
	}
	for _, p := range parcels {
		k := key{p.Epoch, p.Seq}
		d.parcels = append(d.parcels, k)
		d.bytes += len(p.Data)
		if p.Source != testSource {
			s.problems = append(s.problems, fmt.Sprintf("Deliver got a parcel of source %q, want %q", p.Source, testSource))
		}
		if !bytes.Equal(p.Data, payload(k, len(p.Data))) {
			s.problems = append(s.problems, fmt.Sprintf("Deliver got parcel %v with the data of another batch: %.30q", k, p.Data))
		}
	}
	if len(parcels) == 0 {
		s.problems = append(s.problems, "Deliver got no parcels")
	}
	if err := pgcourier.CheckParcels(parcels); err != nil {
		s.problems = append(s.problems, fmt.Sprintf("Deliver(%v): %v", d.parcels, err))
	}
	s.inflight++
	if s.inflight > 1 {
		s.problems = append(s.problems, "Deliver called while another delivery of the source was in flight")
	}
	mode, delay, entered := s.mode, s.delay, s.entered
	i := len(s.deliveries)
	s.deliveries = append(s.deliveries, d)
	tooLarge := s.maxBytes > 0 && d.bytes > s.maxBytes
	s.mu.Unlock()

	var receipts []pgcourier.Receipt
	var err error
	if tooLarge {
		err = fmt.Errorf("deliver to %s: 413 Request Entity Too Large: %w: %w", s.name, pgcourier.ErrTooLarge, pgcourier.ErrRejected)
	} else {
		receipts, err = s.deliver(ctx, parcels, mode, delay, entered)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	s.deliveries[i].done, s.deliveries[i].err = true, err
	s.deliveries[i].took = time.Since(s.deliveries[i].at)
	return receipts, err
}

func (s *fakeSink) deliver(ctx context.Context, parcels []pgcourier.Parcel, mode sinkMode, delay time.Duration, entered chan struct{}) ([]pgcourier.Receipt, error) {
	if entered != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
	}
	switch mode {
	case linkDown:
		return nil, fmt.Errorf("deliver to %s: %w: connection refused", s.name, pgcourier.ErrUnreachable)
	case linkErroring:
		return nil, fmt.Errorf("deliver to %s: 500 Internal Server Error", s.name)
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("deliver to %s: %w", s.name, ctx.Err())
		case <-t.C:
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mute {
		return nil, nil
	}
	var receipts []pgcourier.Receipt
	for _, p := range parcels {
		rc := s.receive(p)
		receipts = append(receipts, rc)
		if !rc.Outcome.Done() {
			break
		}
	}
	if s.loseReplies > 0 {
		s.loseReplies--
		return nil, fmt.Errorf("deliver to %s: %w: connection reset while reading the answer", s.name, pgcourier.ErrUnreachable)
	}
	return receipts, nil
}

// receive takes one parcel. s.mu is held.
func (s *fakeSink) receive(p pgcourier.Parcel) pgcourier.Receipt {
	if !s.relay {
		return s.up.apply(p, s.faults)
	}
	k := key{p.Epoch, p.Seq}
	pr := s.up.progress(p.Source)
	rc := pgcourier.Receipt{Source: p.Source, Epoch: p.Epoch, Seq: p.Seq, Outcome: pgcourier.Stored}
	if pr.Epoch == p.Epoch {
		rc.AppliedSeq = pr.AppliedSeq
	}
	if s.up.holds(p.Source, k) {
		rc.Outcome = pgcourier.Duplicate
		return rc
	}
	s.stored[k] = p
	return rc
}

// forward passes what the relay holds on to the upstream, in order.
func (s *fakeSink) forward() {
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := make([]key, 0, len(s.stored))
	for k := range s.stored {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, compareKeys)
	for _, k := range ks {
		if rc := s.up.apply(s.stored[k], faults{}); rc.Outcome.Done() {
			delete(s.stored, k)
		}
	}
}

func (s *fakeSink) Progress(ctx context.Context, source string) (pgcourier.Progress, error) {
	s.mu.Lock()
	s.progresses++
	mode, progressErr := s.mode, s.progressErr
	s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: %w", s.name, err)
	}
	switch {
	case mode == linkDown:
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: %w: connection refused", s.name, pgcourier.ErrUnreachable)
	case mode == linkErroring && progressErr:
		return pgcourier.Progress{}, fmt.Errorf("progress from %s: 500 Internal Server Error", s.name)
	}
	p := s.up.progress(source)
	if s.relay {
		s.mu.Lock()
		for k := range s.stored {
			if k.Epoch == p.Epoch {
				p.StoredSeq = max(p.StoredSeq, k.Seq)
			}
		}
		s.mu.Unlock()
	}
	return p, nil
}

// deliveryLog returns every call of Deliver so far.
func (s *fakeSink) deliveryLog() []delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.deliveries)
}

func (s *fakeSink) deliveryCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.deliveries)
}

// delivered reports whether some delivery was answered with receipts.
func (s *fakeSink) delivered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.deliveries, func(d delivery) bool { return d.done && d.err == nil })
}

func (s *fakeSink) progressCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.progresses
}

// testOptions returns Options for a router of ob along routes with small
// timings and a logger writing to t.
func testOptions(t *testing.T, ob *fakeOutbox, routes ...*fakeSink) router.Options {
	opts := router.Options{
		Source:        testSource,
		Outbox:        ob,
		MinBackoff:    20 * time.Millisecond,
		MaxBackoff:    200 * time.Millisecond,
		ProbeInterval: 30 * time.Millisecond,
		PollInterval:  20 * time.Millisecond,
		Grace:         200 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, s := range routes {
		opts.Routes = append(opts.Routes, s.route())
	}
	return opts
}

// runningRouter is a Router whose Run goes on in a goroutine.
type runningRouter struct {
	*router.Router
	cancel context.CancelFunc
	done   chan error
}

// startRouter creates a router with opts and runs it until stop or the end
// of the test.
func startRouter(t *testing.T, opts router.Options) *runningRouter {
	t.Helper()
	r, err := router.New(opts)
	if err != nil {
		t.Fatalf("router.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &runningRouter{Router: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	t.Cleanup(func() { rr.stop(t) })
	return rr
}

// stop cancels Run's context, waits for Run to return nil and returns how
// long that took. Calling it again returns 0.
func (rr *runningRouter) stop(t *testing.T) time.Duration {
	t.Helper()
	if rr.done == nil {
		return 0
	}
	start := time.Now()
	rr.cancel()
	select {
	case err := <-rr.done:
		rr.done = nil
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
		return time.Since(start)
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not return within 10s of its context ending")
		return 0
	}
}

// waitFor polls cond until it holds, failing t after 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 5*time.Second, what, cond)
}

// waitWithin polls cond until it holds, failing t after limit.
func waitWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// during calls each every 10ms for d: it observes a window of time in
// which something must not happen.
func during(d time.Duration, each func()) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		each()
		time.Sleep(10 * time.Millisecond)
	}
}
