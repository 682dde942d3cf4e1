package router_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/router"
)

// The tests run a Router against the in-memory fakes of fakes_test.go: an
// outbox with the semantics of capture.Outbox, and sinks that end in one
// exactly-once upstream. Timings are small; where a test tells probing
// from backoff it makes the backoff long, so that the margins are seconds.
// The fakes fail the test on their own when the router breaks a contract:
// a batch acknowledged before the upstream applied it, parcels that are
// not consecutive, two deliveries of the source at once.

func TestRouterDeliversInOrder(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 200)
	sink := newFakeSink(t, "route[0] postgres", up)
	opts := testOptions(t, ob, sink)
	opts.MaxParcels = 16
	opts.MaxBytes = 1000 // ten batches of 100 bytes
	// Only Wake ends the wait for new batches within the test's time.
	opts.PollInterval = time.Minute
	rr := startRouter(t, opts)

	waitFor(t, "batches 1-200 acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 200), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	for _, d := range sink.deliveryLog() {
		if len(d.parcels) > opts.MaxParcels || len(d.parcels) > 1 && d.bytes > opts.MaxBytes {
			t.Errorf("Deliver(%v) got %d parcels of %d bytes, want at most %d parcels and %d bytes",
				d.parcels, len(d.parcels), d.bytes, opts.MaxParcels, opts.MaxBytes)
		}
	}

	ob.add(1, 201, 230)
	rr.Wake()
	waitWithin(t, 2*time.Second, "batches 201-230 acknowledged after Wake", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 230), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	st := ob.route(sink.name)
	if st.Successes == 0 || st.Errors != 0 || st.Target != "fake://"+sink.name {
		t.Errorf("route state of %s = %+v, want successes only, with target %q", sink.name, st, "fake://"+sink.name)
	}
}

func TestRouterFailsOver(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 100)
	first := newFakeSink(t, "route[0] postgres", up)
	second := newFakeSink(t, "route[1] rest", up)
	first.setMode(linkDown)
	opts := testOptions(t, ob, first, second)
	opts.MaxParcels = 8
	rr := startRouter(t, opts)

	waitFor(t, "batches 1-100 acknowledged by way of route[1]", ob.allAcked)
	if !second.delivered() {
		t.Errorf("route[1] delivered nothing while route[0] was down")
	}
	if st := ob.route(first.name); !strings.Contains(st.LastError, "connection refused") {
		t.Errorf("last error of %s = %q, want the connection refused", first.name, st.LastError)
	}

	first.setMode(linkUp)
	next := uint64(101)
	waitFor(t, "route[0] used again once its link is back", func() bool {
		ob.add(1, next, next) // capture goes on appending
		next++
		rr.Wake()
		return first.delivered()
	})
	waitFor(t, "every batch acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, next-1), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	// From route[0]'s first answered delivery on, route[1] is not used.
	var back time.Time
	for _, d := range first.deliveryLog() {
		if d.done && d.err == nil {
			back = d.at
			break
		}
	}
	for _, d := range second.deliveryLog() {
		if d.at.After(back) {
			t.Errorf("route[1] got Deliver(%v) %v after route[0] worked again, want route[0] preferred", d.parcels, d.at.Sub(back))
		}
	}
}

// TestRouterFailsOverAfterLostReply loses the answer of a delivery that
// was applied: the batches go again by the next route, and none is applied
// twice.
func TestRouterFailsOverAfterLostReply(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 50)
	first := newFakeSink(t, "route[0] postgres", up)
	second := newFakeSink(t, "route[1] rest", up)
	first.loseReplies = 1
	opts := testOptions(t, ob, first, second)
	opts.MaxParcels = 10
	startRouter(t, opts)

	waitFor(t, "batches 1-50 acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 50), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	if !second.delivered() {
		t.Errorf("route[1] delivered nothing after route[0] lost its answer")
	}
}

// TestRouterGivesUpHungDelivery hangs route[0]'s deliveries: each is given
// up after DeliveryTimeout at least, and the batches go by way of route[1].
func TestRouterGivesUpHungDelivery(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 30)
	hung := newFakeSink(t, "route[0] rest", up)
	hung.delay = time.Hour // no answer comes
	second := newFakeSink(t, "route[1] file", up)
	opts := testOptions(t, ob, hung, second)
	opts.MaxParcels = 10
	opts.DeliveryTimeout = 100 * time.Millisecond
	startRouter(t, opts)

	waitFor(t, "batches 1-30 acknowledged by way of route[1]", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 30), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	log := hung.deliveryLog()
	if len(log) == 0 || !log[0].done {
		t.Fatalf("route[0] deliveries = %v, want one given up", deliveredKeys(log))
	}
	if d := log[0]; !errors.Is(d.err, context.DeadlineExceeded) || d.took < opts.DeliveryTimeout {
		t.Errorf("hung delivery returned %v after %v, want a deadline exceeded after %v at least", d.err, d.took, opts.DeliveryTimeout)
	}
}

// TestRouterReceiptlessAnswer has route[0] answer deliveries with neither
// receipts nor an error: the route counts as failed.
func TestRouterReceiptlessAnswer(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 30)
	mute := newFakeSink(t, "route[0] rest", up)
	mute.mute = true
	second := newFakeSink(t, "route[1] postgres", up)
	opts := testOptions(t, ob, mute, second)
	opts.MaxParcels = 10
	startRouter(t, opts)

	waitFor(t, "batches 1-30 acknowledged by way of route[1]", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 30), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	if st := ob.route(mute.name); !strings.Contains(st.LastError, "no receipt") {
		t.Errorf("last error of %s = %q, want it to say no receipt came", mute.name, st.LastError)
	}
}

// TestRouterProbesUnreachableRoute makes the backoff of a failed route
// long (4s at least): delivery within 2s of the link coming back can only
// come from probing.
func TestRouterProbesUnreachableRoute(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 20)
	sink := newFakeSink(t, "route[0] rest", up)
	sink.setMode(linkDown)
	opts := testOptions(t, ob, sink)
	opts.MinBackoff, opts.MaxBackoff = 5*time.Second, 10*time.Second
	rr := startRouter(t, opts)

	waitFor(t, "the unreachable route probed", func() bool { return sink.progressCount() >= 4 })
	sink.setMode(linkUp)
	waitWithin(t, 2*time.Second, "batches 1-20 acknowledged within 2s of the link coming back", ob.allAcked)

	// Now the link fails in mid-stream, under a delivery.
	sink.setMode(linkDown)
	ob.add(1, 21, 40)
	rr.Wake()
	failed := func() int {
		n := 0
		for _, d := range sink.deliveryLog() {
			if d.done && errors.Is(d.err, pgcourier.ErrUnreachable) {
				n++
			}
		}
		return n
	}
	waitFor(t, "a delivery failing", func() bool { return failed() > 0 })
	start, base := time.Now(), sink.progressCount()
	waitFor(t, "the route probed while down", func() bool { return sink.progressCount() >= base+3 })
	time.Sleep(200 * time.Millisecond) // probes go on
	// Probes come every ProbeInterval, less a fifth at most.
	probes, limit := sink.progressCount()-base, int(time.Since(start)/(opts.ProbeInterval*4/5))+2
	if probes > limit {
		t.Errorf("route probed %d times in %v while down, want at most %d", probes, time.Since(start), limit)
	}
	sink.setMode(linkUp)
	waitWithin(t, 2*time.Second, "batches 21-40 acknowledged within 2s of the link coming back", ob.allAcked)
	if n := failed(); n != 1 {
		t.Errorf("deliveries that found the link down = %d, want 1: the link is probed, not delivered to, while down", n)
	}
	if diff := cmp.Diff(keys(1, 1, 40), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
}

func TestRouterBacksOffFailingRoute(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		progressErr bool // Progress fails too
	}{
		{name: "deliveries fail"},
		{name: "progress fails too", progressErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream()
			ob := newFakeOutbox(t, up)
			ob.add(1, 1, 10)
			sink := newFakeSink(t, "route[0] rest", up)
			sink.setMode(linkErroring)
			sink.progressErr = tc.progressErr
			opts := testOptions(t, ob, sink)
			start := time.Now()
			startRouter(t, opts)

			if tc.progressErr {
				waitFor(t, "the route probed", func() bool { return sink.progressCount() >= 5 })
			} else {
				waitFor(t, "deliveries tried", func() bool { return sink.deliveryCount() >= 3 })
			}
			time.Sleep(time.Second) // the window observed
			elapsed := time.Since(start)
			log := sink.deliveryLog()
			probes := sink.progressCount()
			if tc.progressErr {
				if len(log) != 0 {
					t.Errorf("Deliver called %d times while Progress failed, want 0", len(log))
				}
				// Probes every ProbeInterval, less a fifth at most, and tries
				// after a backoff that doubles from MinBackoff.
				if limit := int(elapsed/(opts.ProbeInterval*4/5)) + tries(elapsed, opts) + 2; probes > limit {
					t.Errorf("Progress called %d times in %v, want at most %d", probes, elapsed, limit)
				}
			} else {
				if limit := tries(elapsed, opts); len(log) > limit {
					t.Errorf("Deliver called %d times in %v, want at most %d", len(log), elapsed, limit)
				}
				for i := 1; i < len(log); i++ {
					backoff := min(opts.MinBackoff<<(i-1), opts.MaxBackoff)
					if gap := log[i].at.Sub(log[i-1].at); gap < backoff*4/5 {
						t.Errorf("delivery %d came %v after the one before, want at least %v (backoff %v less a fifth)", i, gap, backoff*4/5, backoff)
					}
				}
				// One Progress to resume after each failure, one probe
				// between tries at most.
				if limit := 2*len(log) + 2; probes > limit {
					t.Errorf("Progress called %d times for %d deliveries, want at most %d", probes, len(log), limit)
				}
			}
			if st := ob.route(sink.name); !strings.Contains(st.LastError, "500 Internal Server Error") {
				t.Errorf("last error of %s = %q, want the server's error", sink.name, st.LastError)
			}

			sink.setMode(linkUp)
			waitFor(t, "batches 1-10 acknowledged once the route works", ob.allAcked)
			if diff := cmp.Diff(keys(1, 1, 10), up.applied()); diff != "" {
				t.Errorf("batches applied upstream (-want +got):\n%s", diff)
			}
		})
	}
}

// tries returns how many tries of a failing route fit in d at most: one at
// once, then one after every backoff, which doubles from MinBackoff to
// MaxBackoff, each less a fifth at most.
func tries(d time.Duration, opts router.Options) int {
	n, wait := 0, opts.MinBackoff
	for at := time.Duration(0); at <= d; n++ {
		at += wait * 4 / 5
		wait = min(wait*2, opts.MaxBackoff)
	}
	return n
}

func TestRouterHoldsBlockedStream(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 20)
	sink := newFakeSink(t, "route[0] postgres", up)
	const why = `column "size" of relation "specimen" does not exist`
	retryAfter := 1200 * time.Millisecond
	sink.setFaults(faults{blockAt: 5, blockErr: why, retryAfter: retryAfter})
	opts := testOptions(t, ob, sink)
	opts.MaxParcels = 8
	rr := startRouter(t, opts)

	waitFor(t, "batch 5 blocked", func() bool { return sink.delivered() && up.appliedCount() == 4 })
	log := sink.deliveryLog()
	blocked := len(log) - 1
	if diff := cmp.Diff(keys(1, 1, 4), ob.acked()); diff != "" {
		t.Errorf("batches acknowledged while batch 5 is blocked (-want +got):\n%s", diff)
	}
	sink.setFaults(faults{}) // someone added the column
	for range 5 {
		rr.Wake() // new batches do not end the wait
	}
	waitFor(t, "batches 1-20 acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 20), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	log = sink.deliveryLog()
	if gap := log[blocked+1].at.Sub(log[blocked].at); gap < retryAfter {
		t.Errorf("delivery after the blocked one came %v later, want at least RetryAfter %v", gap, retryAfter)
	}
	if st := ob.route(sink.name); !strings.Contains(st.LastError, why) || !strings.Contains(st.LastError, "seq 5") {
		t.Errorf("last error of %s = %q, want it to name seq 5 and say %q", sink.name, st.LastError, why)
	}
}

func TestRouterHoldsRefusedStream(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 10)
	sink := newFakeSink(t, "route[0] rest", up)
	const why = "invalid batch: parcel says seq 3, its batch seq 4"
	sink.setFaults(faults{refuseAt: 3, refuseErr: why})
	rr := startRouter(t, testOptions(t, ob, sink))

	waitFor(t, "batch 3 refused", func() bool { return sink.delivered() && up.appliedCount() == 2 })
	n := sink.deliveryCount()
	window := 300 * time.Millisecond
	during(window, rr.Wake)
	if got := sink.deliveryCount() - n; got != 0 {
		t.Errorf("Deliver called %d times in %v after a refusal, want 0", got, window)
	}
	if st := ob.route(sink.name); !strings.Contains(st.LastError, why) || !strings.Contains(st.LastError, "seq 3") {
		t.Errorf("last error of %s = %q, want it to name seq 3 and say %q", sink.name, st.LastError, why)
	}
	if diff := cmp.Diff(keys(1, 3, 10), ob.pending()); diff != "" {
		t.Errorf("pending batches (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(keys(1, 1, 2), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
}

// TestRouterResendsWhatUpstreamLost restores the upstream to batch 5 after
// the outbox recorded batches up to 10 as applied.
func TestRouterResendsWhatUpstreamLost(t *testing.T) {
	t.Parallel()

	t.Run("while running", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 10)
		sink := newFakeSink(t, "route[0] postgres", up)
		rr := startRouter(t, testOptions(t, ob, sink))
		waitFor(t, "batches 1-10 acknowledged", ob.allAcked)

		up.restore(1, 5)
		ob.add(1, 11, 20)
		rr.Wake()
		waitFor(t, "batches 1-20 acknowledged", ob.allAcked)
		if diff := cmp.Diff(append(keys(1, 1, 10), keys(1, 6, 20)...), up.applied()); diff != "" {
			t.Errorf("batches applied upstream (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]key{{1, 6}}, ob.reopens()); diff != "" {
			t.Errorf("Reopen calls (-want +got):\n%s", diff)
		}
	})

	t.Run("at start", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 20)
		ob.ackedBefore(1, 10, time.Now())
		up.restore(1, 5)
		sink := newFakeSink(t, "route[0] postgres", up)
		startRouter(t, testOptions(t, ob, sink))

		waitFor(t, "batches 1-20 acknowledged", ob.allAcked)
		if diff := cmp.Diff(keys(1, 6, 20), up.applied()); diff != "" {
			t.Errorf("batches applied upstream (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]key{{1, 6}}, ob.reopens()); diff != "" {
			t.Errorf("Reopen calls (-want +got):\n%s", diff)
		}
	})

	t.Run("no longer held", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 20)
		ob.drop(1, 10) // trimmed after they were acknowledged
		up.restore(1, 5)
		sink := newFakeSink(t, "route[0] postgres", up)
		rr := startRouter(t, testOptions(t, ob, sink))

		waitFor(t, "the missing batches reported", func() bool {
			return strings.Contains(ob.route(sink.name).LastError, "no longer holds")
		})
		n := sink.deliveryCount()
		window := 300 * time.Millisecond
		during(window, rr.Wake)
		if got := sink.deliveryCount() - n; got != 0 {
			t.Errorf("Deliver called %d times in %v after a gap that cannot be filled, want 0", got, window)
		}
		if got := ob.reopens(); len(got) != 1 {
			t.Errorf("Reopen calls = %v, want one", got)
		}
		if st := ob.route(sink.name); !strings.Contains(st.LastError, "seq 6") || !strings.Contains(st.LastError, "new epoch") {
			t.Errorf("last error of %s = %q, want it to name seq 6 and the fix (a new epoch)", sink.name, st.LastError)
		}
		if diff := cmp.Diff(keys(1, 11, 20), ob.pending()); diff != "" {
			t.Errorf("pending batches (-want +got):\n%s", diff)
		}
		if got := up.applied(); len(got) != 0 {
			t.Errorf("batches applied upstream = %v, want none", got)
		}
	})
}

// TestRouterRelay sends batches by way of a relay while the direct route
// is down: the relay's "stored" marks them relayed, and only the final
// destination's word acknowledges them.
func TestRouterRelay(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 10)
	direct := newFakeSink(t, "route[0] postgres", up)
	direct.setMode(linkDown)
	relay := newRelay(t, "route[1] rest", up)
	rr := startRouter(t, testOptions(t, ob, direct, relay))

	waitFor(t, "batches 1-10 relayed", func() bool { return len(ob.relayed()) == 10 })
	if got := ob.acked(); len(got) != 0 {
		t.Errorf("acknowledged batches = %v, want none: the relay has not passed them on", got)
	}

	// The relay passes them on; its answer to the next batch says so.
	relay.forward()
	ob.add(1, 11, 11)
	rr.Wake()
	waitFor(t, "batches 1-10 acknowledged, batch 11 relayed", func() bool {
		return cmp.Equal(keys(1, 1, 10), ob.acked()) && cmp.Equal(keys(1, 11, 11), ob.relayed())
	})

	// The direct route comes back and reports batch 11 applied.
	relay.forward()
	direct.setMode(linkUp)
	waitFor(t, "batch 11 acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 11), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
}

func TestRouterShutdown(t *testing.T) {
	t.Parallel()

	t.Run("delivery in flight finishes", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 50)
		sink := newFakeSink(t, "route[0] rest", up)
		sink.delay = 100 * time.Millisecond
		sink.entered = make(chan struct{}, 1)
		opts := testOptions(t, ob, sink)
		opts.MaxParcels = 10
		rr := startRouter(t, opts)

		awaitDelivery(t, sink)
		took := rr.stop(t)
		if limit := opts.Grace + time.Second; took > limit {
			t.Errorf("Run returned %v after its context ended, want at most %v", took, limit)
		}
		applied := up.applied()
		if len(applied) == 0 {
			t.Fatalf("nothing applied upstream: the delivery in flight was not finished")
		}
		if diff := cmp.Diff(applied, ob.acked()); diff != "" {
			t.Errorf("acknowledged batches differ from the applied ones (-applied +acknowledged):\n%s", diff)
		}
	})

	t.Run("delivery outlasting the grace", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 50)
		sink := newFakeSink(t, "route[0] rest", up)
		sink.delay = time.Minute
		sink.entered = make(chan struct{}, 1)
		opts := testOptions(t, ob, sink)
		rr := startRouter(t, opts)

		awaitDelivery(t, sink)
		took := rr.stop(t)
		if took < opts.Grace || took > opts.Grace+time.Second {
			t.Errorf("Run returned %v after its context ended, want the grace %v and at most a second more", took, opts.Grace)
		}
		log := sink.deliveryLog()
		if last := log[len(log)-1]; !errors.Is(last.err, context.Canceled) {
			t.Errorf("the delivery in flight returned %v, want it canceled after the grace", last.err)
		}
		if got := ob.acked(); len(got) != 0 {
			t.Errorf("acknowledged batches = %v, want none", got)
		}
	})
}

// awaitDelivery waits until a delivery to s has started.
func awaitDelivery(t *testing.T, s *fakeSink) {
	t.Helper()
	select {
	case <-s.entered:
	case <-time.After(5 * time.Second):
		t.Fatalf("no delivery started within 5s")
	}
}

func TestRouterOutboxFailure(t *testing.T) {
	t.Parallel()

	t.Run("outbox down for a while", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 20)
		ob.setFailing(true)
		sink := newFakeSink(t, "route[0] postgres", up)
		startRouter(t, testOptions(t, ob, sink))

		waitFor(t, "a failed outbox call", func() bool { return ob.failureCount() > 0 })
		window := 300 * time.Millisecond
		time.Sleep(window) // the window observed
		if n := ob.failureCount(); n > 2 {
			t.Errorf("outbox called and failed %d times in %v, want at most 2: the router waits before retrying", n, window)
		}
		ob.setFailing(false)
		waitFor(t, "batches 1-20 acknowledged", ob.allAcked)
		if diff := cmp.Diff(keys(1, 1, 20), up.applied()); diff != "" {
			t.Errorf("batches applied upstream (-want +got):\n%s", diff)
		}
	})

	t.Run("acknowledgement fails", func(t *testing.T) {
		t.Parallel()
		up := newUpstream()
		ob := newFakeOutbox(t, up)
		ob.add(1, 1, 20)
		ob.failCalls("Acknowledge", 1)
		sink := newFakeSink(t, "route[0] postgres", up)
		opts := testOptions(t, ob, sink)
		opts.MaxParcels = 10
		startRouter(t, opts)

		waitFor(t, "batches 1-20 acknowledged", ob.allAcked)
		if diff := cmp.Diff(keys(1, 1, 20), up.applied()); diff != "" {
			t.Errorf("batches applied upstream (-want +got):\n%s", diff)
		}
		log := sink.deliveryLog()
		if len(log) < 3 || !cmp.Equal(log[0].parcels, log[1].parcels) {
			t.Errorf("deliveries %v, want the first one again after its acknowledgement failed", deliveredKeys(log))
		}
	})
}

func deliveredKeys(log []delivery) [][]key {
	var ks [][]key
	for _, d := range log {
		ks = append(ks, d.parcels)
	}
	return ks
}

func TestRouterEpochChange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		applied uint64 // of epoch 1 upstream at the start
	}{
		{name: "fresh upstream"},
		{name: "upstream within epoch 1", applied: 30},
		{name: "upstream at the end of epoch 1", applied: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream()
			if tc.applied > 0 {
				up.restore(1, tc.applied)
			}
			ob := newFakeOutbox(t, up)
			ob.add(1, 1, 100)
			ob.add(2, 1, 50)
			sink := newFakeSink(t, "route[0] postgres", up)
			opts := testOptions(t, ob, sink)
			opts.MaxParcels = 16
			startRouter(t, opts)

			waitFor(t, "both epochs acknowledged", ob.allAcked)
			want := append(keys(1, tc.applied+1, 100), keys(2, 1, 50)...)
			if diff := cmp.Diff(want, up.applied()); diff != "" {
				t.Errorf("batches applied upstream (-want +got):\n%s", diff)
			}
			for _, d := range sink.deliveryLog() {
				if d.parcels[0].Epoch != d.parcels[len(d.parcels)-1].Epoch {
					t.Errorf("Deliver(%v) mixes epochs", d.parcels)
				}
			}
		})
	}
}

func TestRouterTrimsAcknowledged(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	up.restore(1, 10)
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 20)
	ob.ackedBefore(1, 10, time.Now().Add(-2*time.Hour))
	sink := newFakeSink(t, "route[0] postgres", up)
	opts := testOptions(t, ob, sink)
	opts.Retention = time.Hour
	startRouter(t, opts)

	waitFor(t, "batches 11-20 acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 11, 20), ob.held()); diff != "" {
		t.Errorf("batches held after the trim (-want +got):\n%s", diff)
	}
	if n := ob.callCount("Trim"); n != 1 {
		t.Errorf("Trim called %d times, want 1 (once a minute)", n)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, nil)
	sink := newFakeSink(t, "route[0] rest", up)
	valid := func() router.Options {
		return router.Options{Source: testSource, Outbox: ob, Routes: []router.Route{sink.route()}}
	}
	for _, tc := range []struct {
		name    string
		edit    func(*router.Options)
		wantErr string // in the error; "" for none
	}{
		{name: "valid", edit: func(*router.Options) {}},
		{name: "no source", edit: func(o *router.Options) { o.Source = "" }, wantErr: "empty"},
		{name: "bad source", edit: func(o *router.Options) { o.Source = "Laptop 1" }, wantErr: "Laptop 1"},
		{name: "no outbox", edit: func(o *router.Options) { o.Outbox = nil }, wantErr: "outbox"},
		{name: "no routes", edit: func(o *router.Options) { o.Routes = nil }, wantErr: "route"},
		{name: "route without sink", edit: func(o *router.Options) {
			o.Routes = append(o.Routes, router.Route{Name: "route[1] file"})
		}, wantErr: "route[1] file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := valid()
			tc.edit(&opts)
			r, err := router.New(opts)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("New(%s) error = %v, want nil", tc.name, err)
			case tc.wantErr == "" && r == nil:
				t.Errorf("New(%s) = nil, want a Router", tc.name)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("New(%s) error = %v, want one that mentions %q", tc.name, err, tc.wantErr)
			case tc.wantErr != "" && r != nil:
				t.Errorf("New(%s) = %v, want nil with the error", tc.name, r)
			}
		})
	}
}

// TestRouterProbesPreferredRouteWhileFailedOver makes the backoff long (4s
// at least) and checks the package's promise that an unreachable route is
// probed every second or two: once route[0]'s link is back, the router
// returns to it (routes are tried in order) well before its backoff ends,
// also while route[1] carries the batches.
func TestRouterProbesPreferredRouteWhileFailedOver(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 20)
	first := newFakeSink(t, "route[0] postgres", up)
	second := newFakeSink(t, "route[1] rest", up)
	first.setMode(linkDown)
	opts := testOptions(t, ob, first, second)
	opts.MinBackoff, opts.MaxBackoff = 5*time.Second, 10*time.Second
	rr := startRouter(t, opts)

	waitFor(t, "batches 1-20 acknowledged by way of route[1]", ob.allAcked)
	first.setMode(linkUp)
	next := uint64(21)
	waitWithin(t, 2*time.Second, "route[0] used again within 2s of its link coming back", func() bool {
		ob.add(1, next, next)
		next++
		rr.Wake()
		return first.delivered()
	})
	waitFor(t, "every batch acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, next-1), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
}

// TestRouterRecordsLastDeliveredSeq checks the route state status shows:
// once the stream is idle, the last seq recorded for the route is the last
// one it delivered.
func TestRouterRecordsLastDeliveredSeq(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 200)
	sink := newFakeSink(t, "route[0] postgres", up)
	opts := testOptions(t, ob, sink)
	opts.MaxParcels = 16
	startRouter(t, opts)

	waitFor(t, "batches 1-200 acknowledged", ob.allAcked)
	// Successes are recorded once a second at most: allow for that.
	deadline := time.Now().Add(3 * time.Second)
	for ob.route(sink.name).LastSeq != 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := ob.route(sink.name).LastSeq; got != 200 {
		t.Errorf("last seq recorded for %s = %d, want 200 (the last delivered, 3s ago at least)", sink.name, got)
	}
}

// rejectingSink is a receiver that refuses every request, as an upstream
// that does not know the node's token does.
type rejectingSink struct {
	mu                   sync.Mutex
	progress, deliveries int
}

func (s *rejectingSink) Deliver(context.Context, []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deliveries++
	return nil, fmt.Errorf("upload: 401 Unauthorized: %w", pgcourier.ErrRejected)
}

func (s *rejectingSink) Progress(context.Context, string) (pgcourier.Progress, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.progress++
	return pgcourier.Progress{}, fmt.Errorf("progress: 401 Unauthorized: %w", pgcourier.ErrRejected)
}

func (s *rejectingSink) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.progress + s.deliveries
}

// TestRouterRejectedRoute checks that a route the upstream refuses is not
// probed as an unreachable one would be (every ProbeInterval), but retried
// after its backoff, and that its error is recorded as needing action.
func TestRouterRejectedRoute(t *testing.T) {
	t.Parallel()
	ob := newFakeOutbox(t, nil)
	ob.add(1, 1, 3)
	opts := testOptions(t, ob)
	opts.MinBackoff, opts.MaxBackoff = 300*time.Millisecond, 300*time.Millisecond
	sink := &rejectingSink{}
	opts.Routes = []router.Route{{Name: "route[0] rest", Target: "http://server:8470", Sink: sink}}
	startRouter(t, opts)
	time.Sleep(1500 * time.Millisecond)
	// Probing every 30 ms would make about 50 calls; a try every 300 ms
	// (less a fifth) makes a handful.
	if n := sink.calls(); n > 12 {
		t.Errorf("the refusing route got %d requests in 1.5 s, want a try per backoff (at most 12)", n)
	}
	if st := ob.route("route[0] rest"); !st.NeedsAction || !strings.Contains(st.LastError, "401") {
		t.Errorf("route state = %+v, want the 401 recorded as needing action", st)
	}
}

// TestRouterShrinksRefusedRequests has the upstream refuse requests over
// 250 bytes (a body limit below the router's): the router sends fewer
// batches per request until they get through, without failing the route,
// and keeps to that size instead of trying larger ones again at once.
func TestRouterShrinksRefusedRequests(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 30) // 100 bytes each
	sink := newFakeSink(t, "route[0] rest", up)
	sink.maxBytes = 250
	opts := testOptions(t, ob, sink)
	opts.MaxParcels = 10
	startRouter(t, opts)

	waitFor(t, "batches 1-30 acknowledged", ob.allAcked)
	if diff := cmp.Diff(keys(1, 1, 30), up.applied()); diff != "" {
		t.Errorf("batches applied upstream (-want +got):\n%s", diff)
	}
	var sizes []int
	refused := 0
	for _, d := range sink.deliveryLog() {
		sizes = append(sizes, d.bytes)
		if d.err != nil {
			refused++
		}
	}
	// 1000 and 500 bytes refused, then 200 at a time.
	if len(sizes) < 3 || sizes[0] != 1000 || sizes[1] != 500 || refused != 2 {
		t.Errorf("delivery sizes %v with %d refused, want 1000 and 500 refused, then only what gets through", sizes, refused)
	}
	if st := ob.route("route[0] rest"); st.Errors != 0 {
		t.Errorf("route state = %+v, want no error recorded: the router adapted", st)
	}
}

// TestRouterOneBatchTooLarge has the upstream refuse a single batch for its
// size: nothing smaller can be sent, so the route fails as needing someone
// to raise the upstream's limit.
func TestRouterOneBatchTooLarge(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 2)
	sink := newFakeSink(t, "route[0] rest", up)
	sink.maxBytes = 50
	startRouter(t, testOptions(t, ob, sink))

	waitFor(t, "the refusal recorded", func() bool { return ob.route("route[0] rest").NeedsAction })
	if st := ob.route("route[0] rest"); !strings.Contains(st.LastError, "413") {
		t.Errorf("route state = %+v, want the 413 recorded", st)
	}
	if got := up.appliedCount(); got != 0 {
		t.Errorf("%d batches applied, want none", got)
	}
}

// TestRouterGivesSlowDeliveryMoreTime has every delivery take longer than
// the router's timeout allows at first (an upstream that applies a large
// transaction slowly): after each timeout the route is given twice the
// time, and once deliveries get through it keeps giving them that long.
func TestRouterGivesSlowDeliveryMoreTime(t *testing.T) {
	t.Parallel()
	up := newUpstream()
	ob := newFakeOutbox(t, up)
	ob.add(1, 1, 3)
	sink := newFakeSink(t, "route[0] postgres", up)
	sink.delay = 200 * time.Millisecond
	opts := testOptions(t, ob, sink)
	opts.MaxParcels = 1
	opts.DeliveryTimeout = 60 * time.Millisecond // plus 100 bytes at 4 KiB/s: 84 ms
	startRouter(t, opts)

	waitFor(t, "batches 1-3 acknowledged", ob.allAcked)
	var given []time.Duration
	timeouts := 0
	for _, d := range sink.deliveryLog() {
		given = append(given, d.given)
		if errors.Is(d.err, context.DeadlineExceeded) {
			timeouts++
		} else if d.err != nil {
			t.Errorf("a delivery failed with %v, want success or a timeout", d.err)
		}
	}
	// Given 84 ms, 169 ms, then 338 ms: enough for 200 ms, and kept.
	base := opts.DeliveryTimeout + pgcourier.LinkTime(100)
	want := []time.Duration{base, 2 * base, 4 * base, 4 * base, 4 * base}
	if len(given) != len(want) || timeouts != 2 {
		t.Fatalf("deliveries were given %v with %d timeouts, want %v with 2", given, timeouts, want)
	}
	for i := range want {
		if d := given[i] - want[i]; d < -5*time.Millisecond || d > 0 {
			t.Errorf("delivery %d was given %v, want %v", i, given[i], want[i])
		}
	}
}
