package integration

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// Environment variables of TestKillNine: seedEnv replays the random
// schedule of a failed run, killsEnv sets the number of SIGKILL rounds (4
// by default; more for a soak).
const (
	seedEnv  = "PGCOURIER_TEST_SEED"
	killsEnv = "PGCOURIER_TEST_KILLS"
)

// TestKillNine runs two laptops and the server under load and, at random
// moments, kills a node's pgcourier with SIGKILL, cuts the power of a
// laptop's Postgres and of the server's, and restarts the server's
// Postgres. After the writers stop, every change must be on the server,
// once.
func TestKillNine(t *testing.T) {
	tp := newTopology(t, 2)
	for _, n := range tp.nodes() {
		pgtest.RequireLocal(t, n.db)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(seedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", seedEnv, s, err)
		}
	}
	kills := 4
	if s := os.Getenv(killsEnv); s != "" {
		var err error
		if kills, err = strconv.Atoi(s); err != nil {
			t.Fatalf("%s=%q: %v", killsEnv, s, err)
		}
	}
	t.Logf("random schedule: %s=%d %s=%d", seedEnv, seed, killsEnv, kills)
	rng := rand.New(rand.NewPCG(seed, 0x6b696c6c))
	dur := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }

	tp.startServer()
	for _, c := range tp.clients {
		c.start()
	}
	ws := tp.startWriters()

	events := []string{"power-cut client database", "restart server database", "power-cut server database"}
	for range kills {
		events = append(events, "kill")
	}
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	ctx := context.Background()
	start := time.Now()
	at := func() string { return time.Since(start).Round(10 * time.Millisecond).String() }
	for round, ev := range events {
		time.Sleep(dur(300*time.Millisecond, 2*time.Second))
		switch ev {
		case "kill":
			n := tp.nodes()[rng.IntN(len(tp.nodes()))]
			pause := dur(100*time.Millisecond, 1500*time.Millisecond)
			t.Logf("%s round %d: SIGKILL pgcourier on %s, restart after %v", at(), round, n.id, pause.Round(time.Millisecond))
			n.kill()
			time.Sleep(pause)
			n.start()
			if n == tp.server {
				n.waitListening()
			}
		case "power-cut client database":
			c := tp.clients[rng.IntN(len(tp.clients))]
			pause := dur(200*time.Millisecond, 1500*time.Millisecond)
			t.Logf("%s round %d: power cut of %s's Postgres, back after %v", at(), round, c.id, pause.Round(time.Millisecond))
			if err := c.db.Kill(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(pause)
			if err := c.db.Start(ctx); err != nil {
				t.Fatal(err)
			}
		case "power-cut server database":
			pause := dur(200*time.Millisecond, 1500*time.Millisecond)
			t.Logf("%s round %d: power cut of the server's Postgres, back after %v", at(), round, pause.Round(time.Millisecond))
			if err := tp.server.db.Kill(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(pause)
			if err := tp.server.db.Start(ctx); err != nil {
				t.Fatal(err)
			}
		case "restart server database":
			t.Logf("%s round %d: restart of the server's Postgres", at(), round)
			if err := tp.server.db.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range tp.nodes() {
			n.failIfDied()
		}
	}
	t.Logf("%s rounds done", at())
	time.Sleep(time.Second)
	stopWriters(t, ws)
	tp.converge()
}
