package integration

import (
	"testing"
	"time"
)

// TestServerOfflineThenBack writes on two laptops while the server's
// pgcourier is not running: the changes wait in the laptops' outboxes, and
// status says so. Then the server starts and everything arrives, once.
func TestServerOfflineThenBack(t *testing.T) {
	tp := newTopology(t, 2)
	for _, c := range tp.clients {
		c.start()
	}
	ws := tp.startWriters()
	for _, c := range tp.clients {
		tp.waitFor(c.id+" captures while the server is offline", 20*time.Second, func() (bool, string) {
			cp := c.captured()
			return cp.lastSeq >= 3, "outbox up to seq " + itoa(cp.lastSeq)
		})
	}
	time.Sleep(3 * time.Second)

	rep, code := tp.clients[0].status()
	if code != 0 && code != 1 {
		t.Errorf("pgcourier status on %s with the server offline: exit code %d, want 0 or 1", tp.clients[0].id, code)
	}
	if rep.Outbox == nil || rep.Outbox.PendingBatches == 0 {
		t.Errorf("pgcourier status on %s with the server offline: outbox %+v, want pending_batches > 0", tp.clients[0].id, rep.Outbox)
	} else {
		t.Logf("status of %s with the server offline: %d batches pending, routes %+v, problems %q",
			rep.Node, rep.Outbox.PendingBatches, rep.Outbox.Routes, rep.Problems)
	}
	for _, c := range tp.clients {
		if seq := tp.appliedSeq(c.id); seq != 0 {
			t.Errorf("server applied seq %d of %s while its pgcourier was not running, want nothing", seq, c.id)
		}
	}

	tp.startServer()
	time.Sleep(2 * time.Second) // the backlog and new writes arrive together
	stopWriters(t, ws)
	tp.converge()

	for _, c := range tp.clients {
		// The acknowledgement follows the apply; converge waited for both.
		rep, code := c.status()
		if code != 0 {
			t.Errorf("pgcourier status on %s after convergence: exit code %d, want 0 (problems %q)", c.id, code, rep.Problems)
		}
		if rep.Outbox == nil || rep.Outbox.PendingBatches != 0 {
			t.Errorf("pgcourier status on %s after convergence: outbox %+v, want pending_batches 0", c.id, rep.Outbox)
		}
	}
	rep, code = tp.server.status()
	if code != 0 {
		t.Errorf("pgcourier status on the server: exit code %d, want 0 (problems %q)", code, rep.Problems)
	}
	applied := map[string]uint64{}
	for _, s := range rep.Sources {
		applied[s.Source] = s.AppliedSeq
	}
	for _, c := range tp.clients {
		want := uint64(c.captured().lastSeq)
		if got, ok := applied[c.id]; !ok || got != want {
			t.Errorf("pgcourier status on the server: source %s applied_seq %d (listed: %v), want %d", c.id, got, ok, want)
		}
	}
}
