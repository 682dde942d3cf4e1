package integration

import (
	"fmt"
	"testing"
	"time"
)

// TestRouteSwitch gives the laptops two routes, the server's REST listener
// first and the server's database second. With the listener down, the
// laptops deliver straight into the database; with it back, they return to
// REST. Then one laptop restarts with only the postgres route, and again
// with only the rest route. Every change arrives once.
func TestRouteSwitch(t *testing.T) {
	tp := newTopology(t, 2)
	for _, c := range tp.clients {
		tp.writeClientConfig(c, viaREST, viaPostgres)
	}
	tp.startServer()
	for _, c := range tp.clients {
		c.start()
	}
	ws := tp.startWriters()

	const rest0, pg1 = "route[0] rest", "route[1] postgres"
	tp.waitRoute("every client delivers over REST", 20*time.Second, rest0, time.Time{}, tp.clients...)

	// The listener goes away: delivery must go on through the database.
	tp.server.stop()
	down := time.Now()
	// Twice: the first deliveries after the switch, and again a few
	// seconds on, after the rest route's backoff has expired and it failed
	// again.
	for i, phase := range []string{"after the switch", "seconds later"} {
		if i > 0 {
			time.Sleep(4 * time.Second)
		}
		before := map[string]int64{}
		for _, c := range tp.clients {
			before[c.id] = tp.appliedSeq(c.id)
		}
		took := tp.waitFor("with REST down, the server's applied_seq advances through the postgres route "+phase, 30*time.Second, func() (bool, string) {
			state := ""
			for _, c := range tp.clients {
				now := tp.appliedSeq(c.id)
				state += fmt.Sprintf("%s applied_seq %d (was %d); ", c.id, now, before[c.id])
				if now < before[c.id]+3 {
					return false, state
				}
			}
			return true, state
		})
		t.Logf("REST down, %s: deliveries went on through the database within %v", phase, took.Round(10*time.Millisecond))
	}
	tp.waitRoute("with REST down, every client records deliveries on the postgres route", 10*time.Second, pg1, down, tp.clients...)
	if healthy(tp.server.addr) {
		t.Fatalf("the server's listener answers while its pgcourier is stopped: the test is not testing what it says")
	}

	// The listener is back: the clients return to the first route.
	tp.startServer()
	up := time.Now()
	took := tp.waitRoute("with REST back, every client delivers over REST again", 60*time.Second, rest0, up, tp.clients...)
	t.Logf("REST back: deliveries over REST again within %v", took.Round(10*time.Millisecond))
	last := map[string]time.Time{}
	for _, c := range tp.clients {
		last[c.id] = c.routes()[pg1].lastSuccess
	}
	time.Sleep(3 * time.Second)
	for _, c := range tp.clients {
		if rs := c.routes()[pg1]; !rs.lastSuccess.Equal(last[c.id]) {
			t.Errorf("%s delivered on %s at %v, after it was back on REST: want REST only while REST works",
				c.id, pg1, rs.lastSuccess.Format("15:04:05.000"))
		}
	}

	// One laptop restarts with the postgres route only, then with rest only.
	c := tp.clients[1]
	c.stop()
	tp.writeClientConfig(c, viaPostgres)
	restarted := time.Now()
	c.start()
	tp.waitRoute(c.id+" delivers with only a postgres route", 20*time.Second, "route[0] postgres", restarted, c)
	c.stop()
	tp.writeClientConfig(c, viaREST)
	restarted = time.Now()
	c.start()
	tp.waitRoute(c.id+" delivers with only a rest route", 20*time.Second, rest0, restarted, c)

	stopWriters(t, ws)
	tp.converge()
}

// waitRoute waits until each client has recorded a delivery on route after
// since, and returns how long that took.
func (tp *topology) waitRoute(what string, timeout time.Duration, route string, since time.Time, clients ...*node) time.Duration {
	tp.t.Helper()
	return tp.waitFor(what, timeout, func() (bool, string) {
		state := ""
		for _, c := range clients {
			routes := c.routes()
			rs := routes[route]
			state += fmt.Sprintf("%s routes %+v; ", c.id, routes)
			if rs.lastSuccess.IsZero() || !rs.lastSuccess.After(since) || rs.lastSeq == 0 {
				return false, state
			}
		}
		return true, state
	})
}
