// Package router ships a node's outbox upstream: it decides which route
// each batch takes, reads the receivers' receipts, and acknowledges a batch
// in the outbox only once its final destination has applied it.
//
// Routes are tried in the order they are configured. A route that fails
// backs off (exponentially, with jitter, capped, and never for good: a
// laptop offline for a week is normal) while the next one is tried. While a
// route is unreachable it is probed cheaply every second or two, so that
// delivery resumes within moments of the link coming back instead of at the
// end of a long backoff. Every route ends in the same exactly-once applier,
// which deduplicates by (source, epoch, seq): switching routes, or
// delivering a batch twice after a crash, never applies it twice.
//
// The router holds no SQL and no HTTP: the outbox and the transports are
// interfaces (Outbox, pgcourier.Sink) that main wires.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	pgcourier "github.com/pgcourier/pgcourier"
)

// Outbox is where the router reads batches and records acknowledgements.
// capture.Outbox implements it. Every method is idempotent.
type Outbox interface {
	// Pending returns up to max consecutive batches of one epoch not yet
	// acknowledged, from (epoch, seq) on, oldest first, and about maxBytes
	// of them at most (always at least one when any is pending).
	Pending(ctx context.Context, epoch int64, seq uint64, max, maxBytes int) ([]pgcourier.Parcel, error)
	// Acknowledge records that the final destination applied the batches
	// of epoch up to seq.
	Acknowledge(ctx context.Context, epoch int64, seq uint64) error
	// Relayed records that a relay stored the batches of epoch up to seq.
	Relayed(ctx context.Context, epoch int64, seq uint64) error
	// Reopen makes the batches of epoch from seq on pending again and
	// reports whether batch seq is still held.
	Reopen(ctx context.Context, epoch int64, seq uint64) (bool, error)
	// Trim deletes acknowledged batches older than retention.
	Trim(ctx context.Context, retention time.Duration) (int64, error)
	// RecordRoute records a route's last success (failure nil, seq the
	// last seq it delivered) or its last failure, for status; a failure
	// wrapping pgcourier.ErrRejected is one someone must act on.
	RecordRoute(ctx context.Context, route, target string, seq uint64, failure error) error
}

// Route is one way upstream.
type Route struct {
	Name   string         // such as "route[0] rest", for logs and status
	Target string         // where it leads, without secrets
	Sink   pgcourier.Sink // the transport
}

// Options configure a Router.
type Options struct {
	Source string // the node whose outbox is shipped
	Outbox Outbox
	Routes []Route // tried in order
	// Retention is how long a batch stays in the outbox after its final
	// destination acknowledged it.
	Retention time.Duration

	MaxParcels int // the most batches one delivery carries
	MaxBytes   int // about the most encoded bytes one delivery carries

	// ProbeInterval is how often an unreachable route is probed.
	ProbeInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed route is
	// used again, doubling from MinBackoff with every failure.
	MinBackoff, MaxBackoff time.Duration
	// PollInterval is how often the outbox is read when nothing woke the
	// router (see Wake).
	PollInterval time.Duration
	// Grace is how long a delivery in flight may go on after Run's context
	// is done.
	Grace time.Duration
	// DeliveryTimeout bounds one delivery, plus the time its batches take
	// at pgcourier.SlowestLink, so that a link that died without closing
	// cannot hold the stream while a large delivery over a poor link still
	// gets through. After a delivery that timed out, a route's deliveries
	// are smaller and given more time, up to a quarter of an hour (see
	// adapt).
	DeliveryTimeout time.Duration

	Logger *slog.Logger
}

// Defaults for zero Options fields.
const (
	DefaultRetention       = 24 * time.Hour
	DefaultMaxParcels      = 64
	DefaultMaxBytes        = 1 << 20
	DefaultProbeInterval   = time.Second
	DefaultMinBackoff      = time.Second
	DefaultMaxBackoff      = 5 * time.Minute
	DefaultPollInterval    = time.Second
	DefaultGrace           = 5 * time.Second
	DefaultDeliveryTimeout = 2 * time.Minute
)

// Timings that are not options.
const (
	probeTimeout   = 3 * time.Second  // one probe of an unreachable route
	refusedHold    = time.Minute      // the wait after a Refused receipt, or a gap that cannot be filled
	trimInterval   = time.Minute      // how often acknowledged batches past the retention are deleted
	recordInterval = time.Second      // how often a route's successes are recorded for status
	outboxBackoff  = 2 * time.Second  // the wait after the local database failed
	maxOutboxWait  = 30 * time.Second // its cap
	// maxDeliveryTime caps the time a delivery is given however slow its
	// route proved (unless its bytes alone need more at the slowest link):
	// a link that died without closing holds the stream this long at most.
	maxDeliveryTime = 15 * time.Minute
	maxPatience     = 1 << 10 // bounds patience well past maxDeliveryTime, so it cannot overflow
	// adaptMemory is how long a route remembers the size of a delivery
	// that failed for its size or timed out, and sends less than that.
	adaptMemory = 10 * time.Minute
)

// Router ships one node's outbox along its routes. Create it with New, run
// it with Run.
type Router struct {
	opts   Options
	log    *slog.Logger
	routes []*route
	wake   chan struct{}

	hold     time.Time // the stream waits until then (blocked, refused)
	last     *route    // the route the last delivery took
	lastTrim time.Time
}

// route is a Route and how it fares.
type route struct {
	Route
	synced    bool   // cursor is from the receiver's progress
	epoch     int64  // cursor: the next batch to offer
	seq       uint64 //
	failures  int
	nextTry   time.Time
	nextProbe time.Time
	down      bool // the last probe or delivery could not reach the receiver
	lastErr   string
	recorded  time.Time // when a success was last recorded
	unsaved   uint64    // the last seq delivered, when not recorded yet
	// limit bounds the bytes of the route's next delivery below
	// Options.MaxBytes (0: no bound of its own), and patience multiplies
	// the time it is given (0: once). Both adapt to a link or receiver
	// slower than the defaults allow for (see adapt and relax).
	limit    int
	patience int
	failedAt time.Time // when a delivery last failed for its size or timed out
}

// New checks opts, fills in defaults and returns a Router. It starts
// nothing.
func New(opts Options) (*Router, error) {
	if err := pgcourier.CheckNodeID(opts.Source); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if opts.Outbox == nil {
		return nil, errors.New("router: no outbox")
	}
	if len(opts.Routes) == 0 {
		return nil, errors.New("router: no route upstream")
	}
	set := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	set(&opts.Retention, DefaultRetention)
	set(&opts.ProbeInterval, DefaultProbeInterval)
	set(&opts.MinBackoff, DefaultMinBackoff)
	set(&opts.MaxBackoff, DefaultMaxBackoff)
	set(&opts.PollInterval, DefaultPollInterval)
	set(&opts.Grace, DefaultGrace)
	set(&opts.DeliveryTimeout, DefaultDeliveryTimeout)
	if opts.MaxParcels <= 0 {
		opts.MaxParcels = DefaultMaxParcels
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	r := &Router{opts: opts, wake: make(chan struct{}, 1), log: opts.Logger}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	for i, rt := range opts.Routes {
		if rt.Sink == nil {
			return nil, fmt.Errorf("router: route %d (%s) has no transport", i, rt.Name)
		}
		r.routes = append(r.routes, &route{Route: rt})
	}
	return r, nil
}

// Wake tells the router that the outbox has new batches. It never blocks;
// it is safe to call from any goroutine.
func (r *Router) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run ships batches until ctx is done, then returns nil. A delivery in
// flight when ctx ends may finish, and be acknowledged, within
// Options.Grace. Run returns an error only for a misuse that retrying
// cannot fix.
func (r *Router) Run(ctx context.Context) error {
	// Deliveries and acknowledgements run on a context that outlives ctx
	// by the grace period, so that shutdown finishes what is in flight.
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(r.opts.Grace, cancel) })
	defer stop()

	outboxWait := outboxBackoff
	for ctx.Err() == nil {
		wait, err := r.step(ctx, work)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.log.Warn("outbox unavailable; retrying", "err", err, "retry_in", outboxWait)
			wait = outboxWait
			outboxWait = min(outboxWait*2, maxOutboxWait)
		} else {
			outboxWait = outboxBackoff
		}
		if wait <= 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

// step does the next piece of work and returns how long to wait before
// the next one, at most (a Wake ends the wait early). Its error is for the
// outbox.
func (r *Router) step(ctx, work context.Context) (time.Duration, error) {
	now := time.Now()
	if now.Sub(r.lastTrim) >= trimInterval {
		n, err := r.opts.Outbox.Trim(work, r.opts.Retention)
		if err != nil {
			return 0, err
		}
		r.lastTrim = now
		if n > 0 {
			r.log.Debug("acknowledged batches deleted", "count", n)
		}
	}
	if now.Before(r.hold) {
		return r.hold.Sub(now), nil
	}
	i := r.pick(now)
	if i < 0 {
		_, wait := r.probe(ctx, now, r.routes)
		return wait, nil
	}
	// The routes preferred to this one are backing off: probe those due,
	// beside this step's work, so that one whose link is back takes over
	// at the next step. The probe touches only those routes.
	if better := r.routes[:i]; due(better, now) {
		probed := make(chan struct{})
		go func() {
			defer close(probed)
			r.probe(ctx, now, better)
		}()
		defer func() { <-probed }()
	}
	rt := r.routes[i]
	if rt != r.last {
		if r.last != nil {
			r.log.Info("switching route", "route", rt.Name, "from", r.last.Name)
		}
		rt.synced = false
		r.last = rt
	}
	if !rt.synced {
		pctx, cancel := context.WithTimeout(work, probeTimeout)
		p, err := rt.Sink.Progress(pctx, r.opts.Source)
		cancel()
		if err != nil {
			r.fail(work, rt, err)
			return 0, nil
		}
		if p.Epoch != 0 && p.AppliedSeq > 0 {
			if err := r.opts.Outbox.Acknowledge(work, p.Epoch, p.AppliedSeq); err != nil {
				return 0, err
			}
		}
		rt.epoch, rt.seq = p.Epoch, max(p.AppliedSeq, p.StoredSeq)+1
		rt.synced = true
	}
	maxBytes := r.opts.MaxBytes
	if rt.limit > 0 {
		maxBytes = min(rt.limit, maxBytes)
	}
	parcels, err := r.opts.Outbox.Pending(work, rt.epoch, rt.seq, r.opts.MaxParcels, maxBytes)
	if err != nil {
		return 0, err
	}
	if len(parcels) == 0 {
		// Idle: record the last success the throttle held back.
		if rt.unsaved > 0 {
			r.record(work, rt, rt.unsaved)
		}
		return r.opts.PollInterval, nil
	}
	size := 0
	for _, p := range parcels {
		size += len(p.Data)
	}
	budget := r.opts.DeliveryTimeout + pgcourier.LinkTime(size)
	given := max(min(budget*time.Duration(max(rt.patience, 1)), maxDeliveryTime), budget)
	dctx, cancel := context.WithTimeout(work, given)
	started := time.Now()
	receipts, derr := rt.Sink.Deliver(dctx, parcels)
	took := time.Since(started)
	cancel()
	if err := r.settle(work, rt, receipts); err != nil {
		return 0, err
	}
	if derr != nil {
		if !r.adapt(rt, parcels, size, derr) {
			r.fail(work, rt, derr)
		}
		return 0, nil
	}
	r.relax(rt, took, budget)
	if len(receipts) == 0 {
		r.fail(work, rt, fmt.Errorf("%s answered no receipt for %d batches", rt.Name, len(parcels)))
		return 0, nil
	}
	return 0, nil
}

// adapt fits the route's next delivery to a link or receiver slower than
// the defaults allow for, after the delivery of parcels (size bytes)
// failed with err: a receiver that refused the request for its size gets
// half of it at once; after a delivery that timed out, the next one is
// half as large, when it can be, and given twice the time. It reports
// whether the route may be used again at once, without counting a failure.
func (r *Router) adapt(rt *route, parcels []pgcourier.Parcel, size int, err error) bool {
	switch {
	case errors.Is(err, pgcourier.ErrTooLarge) && len(parcels) > 1:
		rt.limit, rt.failedAt = max(size/2, 1), time.Now()
		r.log.Info("upstream refused a request this large; sending fewer batches per request",
			"route", rt.Name, "batches", len(parcels), "bytes", size)
		return true
	case timedOut(err):
		if len(parcels) > 1 {
			rt.limit = max(size/2, 1)
		}
		rt.patience, rt.failedAt = min(max(rt.patience, 1)*2, maxPatience), time.Now()
		r.log.Debug("delivery timed out; the next one is smaller and given longer",
			"route", rt.Name, "batches", len(parcels), "bytes", size, "patience", rt.patience)
	}
	return false
}

// relax lets the route's deliveries grow back after one that succeeded in
// took, of a delivery given budget at first: the time it is given halves
// when it used less than a quarter of that; the size doubles once no
// delivery failed for its size or timed out for adaptMemory. A route on a
// link that stays poor so settles at what gets through, rather than
// failing every other delivery.
func (r *Router) relax(rt *route, took, budget time.Duration) {
	if rt.patience > 1 && took < budget/4 {
		rt.patience /= 2
	}
	if rt.limit == 0 || time.Since(rt.failedAt) < adaptMemory {
		return
	}
	if rt.limit *= 2; rt.limit >= r.opts.MaxBytes {
		rt.limit = 0
	}
}

// timedOut reports whether err says that something took too long, rather
// than that it failed.
func timedOut(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// due reports whether any of routes is due for a probe.
func due(routes []*route, now time.Time) bool {
	for _, rt := range routes {
		if !now.Before(rt.nextProbe) {
			return true
		}
	}
	return false
}

// pick returns the index of the first route that may be used now, or -1.
func (r *Router) pick(now time.Time) int {
	for i, rt := range r.routes {
		if !now.Before(rt.nextTry) {
			return i
		}
	}
	return -1
}

// probe asks each of routes that is due whether its receiver is
// reachable. It reports whether one whose link was down answered (it may be
// used at once), and otherwise how long until the next of routes may be
// used or probed.
func (r *Router) probe(ctx context.Context, now time.Time, routes []*route) (bool, time.Duration) {
	next := now.Add(time.Hour)
	for _, rt := range routes {
		if !now.Before(rt.nextProbe) {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			_, err := rt.Sink.Progress(pctx, r.opts.Source)
			cancel()
			now = time.Now()
			switch {
			case errors.Is(err, pgcourier.ErrUnreachable):
				rt.down = true
				rt.nextProbe = now.Add(jitter(r.opts.ProbeInterval))
			case err != nil:
				// Reachable but refusing: probing more often would not
				// help; wait out the backoff.
				rt.down = false
				rt.nextProbe = rt.nextTry
			case rt.down:
				// The link is back: use it at once.
				r.log.Info("route reachable again", "route", rt.Name)
				rt.down, rt.failures, rt.nextTry = false, 0, now
				return true, 0
			default:
				// Reachable, but deliveries failed: wait out the backoff.
				rt.nextProbe = rt.nextTry
			}
		}
		next = earliest(next, rt.nextTry, rt.nextProbe)
	}
	return false, max(next.Sub(now), 0)
}

// settle records what the receipts say and moves the route's cursor.
func (r *Router) settle(ctx context.Context, rt *route, receipts []pgcourier.Receipt) error {
	if len(receipts) == 0 {
		return nil
	}
	ob := r.opts.Outbox
	var applied, stored uint64 // the last seq applied, the last stored by a relay
	epoch := receipts[0].Epoch
	for _, rc := range receipts {
		switch rc.Outcome {
		case pgcourier.Applied, pgcourier.Duplicate:
			applied = rc.Seq
		case pgcourier.Stored:
			stored = rc.Seq
		}
		applied = max(applied, rc.AppliedSeq)
	}
	if applied > 0 {
		if err := ob.Acknowledge(ctx, epoch, applied); err != nil {
			return err
		}
	}
	if stored > applied {
		if err := ob.Relayed(ctx, epoch, stored); err != nil {
			return err
		}
	}
	last := receipts[len(receipts)-1]
	if last.Outcome.Done() {
		rt.epoch, rt.seq = last.Epoch, last.Seq+1
		r.succeed(ctx, rt, last.Seq, true)
		return nil
	}
	// The route works; the stream is what cannot go on. The problem stays
	// the route's last error, so that it is not reported again as new.
	r.succeed(ctx, rt, max(applied, stored), false)
	switch last.Outcome {
	case pgcourier.Gap:
		return r.gap(ctx, rt, last)
	case pgcourier.Blocked:
		wait := max(last.RetryAfter, time.Second)
		r.hold = time.Now().Add(wait)
		r.report(ctx, rt, slog.LevelWarn, "batch blocked upstream; waiting",
			fmt.Errorf("%s blocked at seq %d: %s", last.Source, last.Seq, last.Error), "seq", last.Seq, "retry_in", wait)
	default:
		r.hold = time.Now().Add(refusedHold)
		r.report(ctx, rt, slog.LevelError, "batch refused upstream; someone must act",
			fmt.Errorf("%w: %s seq %d: %s", pgcourier.ErrRejected, last.Source, last.Seq, last.Error), "seq", last.Seq, "retry_in", refusedHold)
	}
	return nil
}

// gap handles a receiver that needs an earlier batch than the one offered.
func (r *Router) gap(ctx context.Context, rt *route, rc pgcourier.Receipt) error {
	if rc.NextSeq >= rc.Seq {
		// Nothing is missing upstream; offer from where the receiver is.
		rt.epoch, rt.seq = rc.Epoch, rc.NextSeq
		return nil
	}
	held, err := r.opts.Outbox.Reopen(ctx, rc.Epoch, rc.NextSeq)
	if err != nil {
		return err
	}
	if held {
		r.log.Warn("upstream needs earlier batches; sending them again", "route", rt.Name, "epoch", rc.Epoch, "seq", rc.NextSeq)
		rt.epoch, rt.seq = rc.Epoch, rc.NextSeq
		return nil
	}
	r.hold = time.Now().Add(refusedHold)
	r.report(ctx, rt, slog.LevelError, "upstream needs batches this node no longer holds",
		fmt.Errorf("upstream needs %s epoch %d seq %d, which the outbox no longer holds; start a new epoch (see docs/operations.md)",
			rc.Source, rc.Epoch, rc.NextSeq), "seq", rc.NextSeq)
	return nil
}

// succeed marks a delivery on rt as done, up to seq; healed says whether
// it also ends the route's last problem.
func (r *Router) succeed(ctx context.Context, rt *route, seq uint64, healed bool) {
	if rt.failures > 0 {
		r.log.Info("route working again", "route", rt.Name, "failures", rt.failures)
	}
	news := rt.failures > 0 || (healed && rt.lastErr != "")
	rt.failures, rt.nextTry, rt.nextProbe, rt.down = 0, time.Time{}, time.Time{}, false
	if healed {
		rt.lastErr = ""
	}
	if seq == 0 {
		return
	}
	if news || time.Since(rt.recorded) >= recordInterval {
		r.record(ctx, rt, seq)
	} else {
		rt.unsaved = seq
	}
}

// record records a success of rt up to seq for status.
func (r *Router) record(ctx context.Context, rt *route, seq uint64) {
	rt.recorded, rt.unsaved = time.Now(), 0
	if err := r.opts.Outbox.RecordRoute(ctx, rt.Name, rt.Target, seq, nil); err != nil {
		r.log.Debug("could not record route state", "route", rt.Name, "err", err)
	}
}

// fail marks a failed delivery or sync on rt and schedules its next try.
func (r *Router) fail(ctx context.Context, rt *route, err error) {
	rt.failures++
	rt.synced = false
	rt.down = errors.Is(err, pgcourier.ErrUnreachable)
	wait := jitter(min(r.opts.MinBackoff<<min(rt.failures-1, 20), r.opts.MaxBackoff))
	now := time.Now()
	rt.nextTry = now.Add(wait)
	rt.nextProbe = now.Add(min(jitter(r.opts.ProbeInterval), wait))
	level, msg := slog.LevelDebug, "route failed; backing off"
	switch {
	case errors.Is(err, pgcourier.ErrRejected):
		level, msg = slog.LevelError, "route refused by the upstream; someone must fix the configuration"
	case rt.failures == 1:
		level = slog.LevelWarn
	}
	r.report(ctx, rt, level, msg, err, "retry_in", wait.Round(time.Millisecond), "failures", rt.failures)
}

// report logs a problem on rt and records it for status when it is new.
func (r *Router) report(ctx context.Context, rt *route, level slog.Level, msg string, err error, args ...any) {
	args = append([]any{"route", rt.Name, "err", err}, args...)
	if err.Error() == rt.lastErr && level > slog.LevelDebug {
		level = slog.LevelDebug // said already
	}
	r.log.Log(ctx, level, msg, args...)
	if err.Error() == rt.lastErr {
		return
	}
	rt.lastErr = err.Error()
	if rerr := r.opts.Outbox.RecordRoute(ctx, rt.Name, rt.Target, 0, err); rerr != nil {
		r.log.Debug("could not record route state", "route", rt.Name, "err", rerr)
	}
}

// jitter returns d give or take a fifth.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*4/5 + rand.N(d*2/5+1)
}

func earliest(t time.Time, more ...time.Time) time.Time {
	for _, u := range more {
		if !u.IsZero() && u.Before(t) {
			t = u
		}
	}
	return t
}
