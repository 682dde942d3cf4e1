package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// pair writes the configurations of a client and a server on the two
// clusters, the client reaching the server over REST at addr, and
// initialises both databases.
func pair(t *testing.T, laptop, server *pgtest.Cluster, addr string) (client, upstream string) {
	t.Helper()
	dir := t.TempDir()
	token, hash, err := newToken()
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgtest.Cluster{laptop, server} {
		c.Exec(t, `CREATE TABLE public.visit (id bigint PRIMARY KEY, note text, weight numeric)`)
	}
	client = filepath.Join(dir, "client.toml")
	write(t, client, fmt.Sprintf(`node = "laptop-07"
role = "client"
[database]
url = %q
[capture]
tables = ["public.*"]
[[route]]
kind = "rest"
url = "http://%s"
token-file = %q
`, laptop.URL(), addr, tokenFile))
	upstream = filepath.Join(dir, "server.toml")
	write(t, upstream, fmt.Sprintf(`node = "server-1"
role = "server"
[database]
url = %q
[listen]
addr = %q
[[listen.source]]
node = "laptop-07"
token-sha256 = %q
`, server.URL(), addr, hash))
	for _, f := range []string{client, upstream} {
		if code, out, errOut := runCmd(t, "init", "-c", f); code != exitOK {
			t.Fatalf("init -c %s = %d\n%s%s", f, code, out, errOut)
		}
	}
	return client, upstream
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// node runs the node of the config file in this process until the test
// ends or stop is called; stop returns runNode's error.
func node(t *testing.T, file string) (stop func() error) {
	t.Helper()
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	go func() { done <- runNode(ctx, cfg, log) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(15 * time.Second):
			t.Fatalf("node %s did not stop within 15 s of SIGTERM", cfg.Node)
			return nil
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("node %s: %v", cfg.Node, err)
		}
		if t.Failed() {
			t.Logf("log of %s:\n%s", cfg.Node, logs.tail(200))
		}
	})
	return stop
}

// status runs "pgcourier status --json" and decodes its report.
func status(t *testing.T, file string) (statusReport, int) {
	t.Helper()
	code, out, errOut := runCmd(t, "status", "-c", file, "--json")
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status -c %s = %d, output not JSON (%v):\n%s%s", file, code, err, out, errOut)
	}
	return rep, code
}

func TestRunClientAndServer(t *testing.T) {
	cs := pgtest.StartN(t, 2)
	laptop, server := cs[0], cs[1]
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	client, upstream := pair(t, laptop, server, addr)

	// The server is offline: the client captures into its outbox.
	stopClient := node(t, client)
	for i := range 20 {
		laptop.Exec(t, `INSERT INTO public.visit VALUES ($1, 'offline', 60.5)`, i)
	}
	waitFor(t, 20*time.Second, "the client's outbox to hold the rows", func() bool {
		rep, _ := status(t, client)
		return rep.Outbox != nil && rep.Outbox.PendingRows == 20
	})
	rep, _ := status(t, client)
	if len(rep.Outbox.Routes) != 1 || rep.Outbox.Routes[0].LastError == "" {
		t.Errorf("client status routes = %+v, want one route with its last error (the server is offline)", rep.Outbox.Routes)
	}

	// The link comes back.
	stopServer := node(t, upstream)
	waitFor(t, 20*time.Second, "the server to apply the rows", func() bool {
		return count(t, server, `SELECT count(*) FROM public.visit`) == 20
	})
	waitFor(t, 10*time.Second, "the client's outbox to be acknowledged", func() bool {
		rep, _ := status(t, client)
		return rep.Outbox.PendingBatches == 0
	})
	rep, code := status(t, client)
	if code != exitOK || len(rep.Problems) != 0 {
		t.Errorf("client status = %d, problems %q; want 0, none", code, rep.Problems)
	}
	if r := rep.Outbox.Routes[0]; r.LastSuccessAt == nil || r.LastError != "" {
		t.Errorf("client route status = %+v, want a success and no current error", r)
	}
	srep, code := status(t, upstream)
	if code != exitOK || len(srep.Sources) != 1 || srep.Sources[0].Source != "laptop-07" || srep.Sources[0].AppliedSeq == 0 {
		t.Errorf("server status = %d, %+v; want 0 and laptop-07 with an applied seq", code, srep.Sources)
	}

	// A change the server cannot apply blocks the source, and status says
	// so in one line.
	server.Exec(t, `ALTER TABLE public.visit DROP COLUMN weight`)
	laptop.Exec(t, `UPDATE public.visit SET weight = 61 WHERE id = 1`)
	waitFor(t, 20*time.Second, "the server to report the blocked batch", func() bool {
		rep, _ := status(t, upstream)
		return len(rep.Problems) > 0
	})
	srep, code = status(t, upstream)
	if code != exitFail || !strings.Contains(srep.Problems[0], "laptop-07 blocked at seq") || !strings.Contains(srep.Problems[0], "weight") {
		t.Errorf("server status = %d, problems %q; want 1 and a line saying laptop-07 is blocked on column weight", code, srep.Problems)
	}
	_, out, _ := runCmd(t, "status", "-c", upstream)
	t.Logf("pgcourier status -c server.toml:\n%s", out)
	_, cout, _ := runCmd(t, "status", "-c", client)
	t.Logf("pgcourier status -c client.toml:\n%s", cout)
	if !strings.HasPrefix(out, "PROBLEM: laptop-07 blocked at seq") {
		t.Errorf("status output starts %q, want the problem first", firstLine(out))
	}
	// Fixed upstream, the stream resumes by itself.
	server.Exec(t, `ALTER TABLE public.visit ADD COLUMN weight numeric`)
	waitFor(t, 90*time.Second, "the blocked batch to apply after the fix", func() bool {
		return count(t, server, `SELECT count(*) FROM public.visit WHERE weight = 61`) == 1
	})

	// A batch that breaks a rule upstream can be parked, whole, to let
	// the source's later batches through.
	server.Exec(t, `ALTER TABLE public.visit ADD CONSTRAINT plausible CHECK (weight < 100)`)
	laptop.Exec(t, `UPDATE public.visit SET weight = 150 WHERE id = 2`)
	var stuckSeq uint64
	waitFor(t, 20*time.Second, "the implausible weight to block", func() bool {
		rep, _ := status(t, upstream)
		if len(rep.Sources) == 1 && rep.Sources[0].Blocked != nil {
			stuckSeq = rep.Sources[0].Blocked.Seq
			return true
		}
		return false
	})
	laptop.Exec(t, `INSERT INTO public.visit VALUES (100, 'after the blocked one', 70)`)
	if code, out, errOut := runCmd(t, "park", "-c", upstream, "--source", "laptop-07", "--seq", fmt.Sprint(stuckSeq+1)); code != exitFail || !strings.Contains(errOut, "nothing parked") {
		t.Errorf("park of the wrong seq = %d, %q, %q; want 1 and nothing parked", code, out, errOut)
	}
	if code, out, errOut := runCmd(t, "park", "-c", upstream, "--source", "laptop-07", "--seq", fmt.Sprint(stuckSeq), "--reason", "weight checked on paper"); code != exitOK {
		t.Fatalf("park = %d, %q, %q; want 0", code, out, errOut)
	}
	waitFor(t, 90*time.Second, "the batch after the parked one to apply", func() bool {
		return count(t, server, `SELECT count(*) FROM public.visit WHERE id = 100`) == 1
	})
	if n := count(t, server, `SELECT count(*) FROM pgcourier.conflicts WHERE rule = 'parked' AND incoming->>'id' = '2' AND incoming->>'weight' = '150' AND detail = 'weight checked on paper'`); n != 1 {
		t.Errorf("parked conflicts with the implausible weight = %d, want 1", n)
	}
	if n := count(t, server, `SELECT count(*) FROM public.visit WHERE id = 2 AND weight = 150`); n != 0 {
		t.Errorf("the parked change was applied anyway")
	}
	if code, _, errOut := runCmd(t, "park", "-c", upstream, "--source", "laptop-07"); code != exitFail || !strings.Contains(errOut, "not blocked") {
		t.Errorf("park with nothing blocked = %d, %q; want 1 and 'not blocked'", code, errOut)
	}

	// SIGTERM: both stop cleanly, quickly.
	for _, stop := range []func() error{stopClient, stopServer} {
		start := time.Now()
		if err := stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("stopping took %s, want a few seconds", d)
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func count(t *testing.T, c *pgtest.Cluster, sql string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestResyncCommand loses a client's slot: run stops with the recovery,
// resync starts a new epoch, and the server ends with every row.
func TestResyncCommand(t *testing.T) {
	cs := pgtest.StartN(t, 2)
	laptop, server := cs[0], cs[1]
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	client, upstream := pair(t, laptop, server, addr)
	node(t, upstream)
	stopClient := node(t, client)
	laptop.Exec(t, `INSERT INTO public.visit SELECT g, 'first', 60 FROM generate_series(1, 10) g`)
	waitFor(t, 20*time.Second, "the first rows upstream", func() bool {
		return count(t, server, `SELECT count(*) FROM public.visit`) == 10
	})
	if err := stopClient(); err != nil {
		t.Fatal(err)
	}

	if code, _, errOut := runCmd(t, "resync", "-c", client); code != exitFail || !strings.Contains(errOut, "--force") {
		t.Errorf("resync of a healthy slot = %d, %q; want 1 and a word about --force", code, errOut)
	}
	waitFor(t, 10*time.Second, "the stopped capture's walsender to let go of the slot", func() bool {
		return count(t, laptop, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgcourier_laptop_07' AND active`) == 0
	})
	laptop.Exec(t, `SELECT pg_drop_replication_slot('pgcourier_laptop_07')`)
	laptop.Exec(t, `INSERT INTO public.visit SELECT g, 'while lost', 61 FROM generate_series(11, 20) g`)
	cfg, err := config.Load(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := runNode(t.Context(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "pgcourier resync") {
		t.Errorf("run with a lost slot = %v, want an error naming pgcourier resync", err)
	}
	code, out, errOut := runCmd(t, "resync", "-c", client)
	if code != exitOK || !strings.Contains(out, "new epoch") {
		t.Fatalf("resync = %d, %q, %q; want 0 and a new epoch", code, out, errOut)
	}
	node(t, client)
	waitFor(t, 30*time.Second, "every row upstream", func() bool {
		return count(t, server, `SELECT count(*) FROM public.visit`) == 20
	})
	if n := count(t, server, `SELECT count(*) FROM pgcourier.source_epochs WHERE source = 'laptop-07'`); n != 2 {
		t.Errorf("epochs of laptop-07 upstream = %d, want 2", n)
	}
}

// TestStatusWrongToken runs a client whose token the server does not know:
// status says, in one line, that the route must be fixed.
func TestStatusWrongToken(t *testing.T) {
	cs := pgtest.StartN(t, 2)
	laptop, server := cs[0], cs[1]
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	client, upstream := pair(t, laptop, server, addr)
	write(t, filepath.Join(filepath.Dir(client), "token"), "not-the-token")
	node(t, upstream)
	node(t, client)
	laptop.Exec(t, `INSERT INTO public.visit VALUES (1, 'x', 60)`)
	waitFor(t, 20*time.Second, "status to report the refused route", func() bool {
		rep, code := status(t, client)
		return code == exitFail && len(rep.Problems) > 0
	})
	rep, _ := status(t, client)
	if p := rep.Problems[0]; !strings.Contains(p, "route[0] rest") || !strings.Contains(p, "401") {
		t.Errorf("status problem = %q, want route[0] rest and the 401", p)
	}
}

// TestDoctorRoutes checks what doctor says of a client's route: reached
// with the right token, refused with a wrong one (with the fix), and out of
// reach without failing while the server is down.
func TestDoctorRoutes(t *testing.T) {
	cs := pgtest.StartN(t, 2)
	laptop, server := cs[0], cs[1]
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	client, upstream := pair(t, laptop, server, addr)
	doctorLine := func() (string, string) {
		t.Helper()
		_, out, _ := runCmd(t, "doctor", "-c", client)
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "route[0] rest") {
				return l, out
			}
		}
		t.Fatalf("doctor says nothing of route[0]:\n%s", out)
		return "", ""
	}
	if l, out := doctorLine(); !strings.HasPrefix(l, "ok") || !strings.Contains(l, "out of reach") {
		t.Errorf("doctor with the server down: %q, want ok and out of reach\n%s", l, out)
	}
	node(t, upstream)
	waitFor(t, 10*time.Second, "the listener", func() bool {
		l, _ := doctorLine()
		return strings.Contains(l, "reached")
	})
	if l, out := doctorLine(); !strings.HasPrefix(l, "ok") || !strings.Contains(l, "nothing from laptop-07 applied") {
		t.Errorf("doctor with the server up: %q, want ok and reached\n%s", l, out)
	}
	write(t, filepath.Join(filepath.Dir(client), "token"), "not-the-token")
	l, out := doctorLine()
	t.Logf("pgcourier doctor with a wrong token:\n%s", out)
	if !strings.HasPrefix(l, "FAIL") || !strings.Contains(l, "401") || !strings.Contains(out, "fix: check the route") {
		t.Errorf("doctor with a wrong token: %q, want FAIL, the 401 and the fix\n%s", l, out)
	}
}
