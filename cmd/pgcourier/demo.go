package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// The demo's topology: two field laptops shipping over REST to one community
// server, each node with its own throw-away Postgres cluster.
var demoLaptops = []string{"laptop-01", "laptop-02"}

const demoServer = "community"

const (
	// demoSubjects is how many subjects each research assistant enrols.
	demoSubjects = 50
	// demoPace is the pause between two forms a research assistant saves,
	// so that data entry takes a few seconds and capture keeps up live.
	demoPace = 15 * time.Millisecond
	// demoTick is how often progress is polled and shown.
	demoTick = 250 * time.Millisecond
	// demoCaptureTimeout bounds the wait for capture to hold everything
	// entered once data entry has ended.
	demoCaptureTimeout = 30 * time.Second
	// demoCatchUpTimeout bounds the wait for the server to apply every
	// batch once it is up.
	demoCatchUpTimeout = 60 * time.Second
	// demoStopTimeout bounds the wait for a node to stop.
	demoStopTimeout = 15 * time.Second
	// demoLogLines is how many lines of the nodes' logs a failure shows.
	demoLogLines = 40
)

// demoSchema is the study database every node has, after the models of an
// EDC (electronic data capture) project: subjects, their consents, their
// visits and the specimens requisitioned at a visit. Keys are UUIDs made on
// the laptop that enters the row, so rows from different laptops never
// collide upstream.
const demoSchema = `
CREATE TABLE subjects (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    subject_identifier text        NOT NULL UNIQUE,
    dob                date        NOT NULL,
    gender             text        NOT NULL CHECK (gender IN ('F', 'M')),
    enrolled_at        timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE consents (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    subject      uuid        NOT NULL REFERENCES subjects,
    version      text        NOT NULL,
    consented_at timestamptz NOT NULL
);
CREATE TABLE visits (
    id              uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    subject         uuid         NOT NULL REFERENCES subjects,
    visit_code      text         NOT NULL,
    report_datetime timestamptz  NOT NULL,
    weight          numeric(4,1),
    notes           text,
    UNIQUE (subject, visit_code)
);
CREATE TABLE requisitions (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    visit       uuid        NOT NULL REFERENCES visits,
    panel       text        NOT NULL,
    drawn_at    timestamptz NOT NULL,
    specimen_id text        NOT NULL UNIQUE
);
`

// demoTables are the study's tables, in the order the comparison reports
// them.
var demoTables = []string{"subjects", "consents", "visits", "requisitions"}

// runDemo runs the whole client → server topology on throw-away local
// clusters: two laptops capture data entered while the server is offline,
// then the server comes up, applies everything, and the demo checks it row
// by row. It leaves nothing behind.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgcourier demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "show the nodes' logs (on stderr) as they run")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: pgcourier demo [-v]")
		fmt.Fprintln(fs.Output())
		fmt.Fprintln(fs.Output(), "Runs two field laptops and a community server on throw-away local Postgres")
		fmt.Fprintln(fs.Output(), "clusters, enters data on the laptops while the server is offline, brings the")
		fmt.Fprintln(fs.Output(), "server up and checks its tables against the laptops' row by row.")
		fmt.Fprintln(fs.Output())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgcourier demo: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}

	logs := &logBuffer{}
	var logTo io.Writer = logs
	if *verbose {
		logTo = io.MultiWriter(logs, stderr)
	}
	d := &demo{
		out:  stdout,
		live: isTerminal(stdout),
		log:  slog.New(slog.NewTextHandler(logTo, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	start := time.Now()
	err := d.run(ctx)
	d.endLine()
	switch {
	case err == nil:
		fmt.Fprintf(stdout, "stopped the nodes and removed the clusters; the demo took %s\n", seconds(time.Since(start)))
		return exitOK
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "pgcourier demo: interrupted after %s; stopped the nodes and removed the clusters\n", seconds(time.Since(start)))
		return exitFail
	}
	if !*verbose {
		if tail := logs.tail(demoLogLines); tail != "" {
			fmt.Fprintf(stderr, "The nodes' logs, last %d lines:\n%s", demoLogLines, tail)
		}
	}
	fmt.Fprintf(stderr, "pgcourier demo: %v\n", err)
	return exitFail
}

// demo is one run of the demo.
type demo struct {
	out     io.Writer
	live    bool // out is a terminal: progress lines are rewritten in place
	midLine bool // a progress line is on the screen without its line break
	log     *slog.Logger
	dir     string // configs and tokens
	laptops []*demoNode
	server  *demoNode
	nodes   *fleet
}

// demoNode is one node of the demo and its cluster.
type demoNode struct {
	name    string
	cluster *pgtest.Cluster
	file    string         // its configuration file
	cfg     *config.Config // as loaded from file
	conn    *pgx.Conn      // for the demo's own queries; used by one goroutine at a time
	work    fieldWork      // laptops: what was entered on it
}

// run runs the demo's steps. Whatever happens, it stops what it started and
// removes what it created before it returns.
func (d *demo) run(ctx context.Context) (err error) {
	fmt.Fprintln(d.out, "pgcourier demo: two field laptops and a community server, each with its own Postgres")
	fmt.Fprintln(d.out)

	d.dir, err = os.MkdirTemp("", "pgcourier-demo-")
	if err != nil {
		return fmt.Errorf("create a temporary directory: %w", err)
	}
	defer os.RemoveAll(d.dir)

	for _, name := range demoLaptops {
		d.laptops = append(d.laptops, &demoNode{name: name})
	}
	d.server = &demoNode{name: demoServer}
	all := append(slices.Clone(d.laptops), d.server)
	defer func() {
		for _, n := range all {
			if n.conn != nil {
				n.conn.Close(context.WithoutCancel(ctx))
			}
			if n.cluster != nil {
				n.cluster.Close()
			}
		}
	}()

	err = d.step("starting three throw-away Postgres servers", func() error { return d.startClusters(ctx, all) })
	if err != nil {
		return err
	}
	err = d.step("creating the study's tables (subjects, consents, visits, requisitions) on each", func() error {
		for _, n := range all {
			if _, err := n.conn.Exec(ctx, demoSchema); err != nil {
				return fmt.Errorf("create the study's tables on %s: %w", n.name, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	var addr string
	err = d.step("writing each node's configuration, with a new token per laptop", func() (err error) {
		addr, err = d.configure()
		return err
	})
	if err != nil {
		return err
	}
	err = d.step("preparing each database for pgcourier (pgcourier init)", func() error {
		for _, n := range all {
			var out bytes.Buffer
			if code := runInit(ctx, []string{"-c", n.file}, &out, &out); code != exitOK {
				return fmt.Errorf("pgcourier init on %s: %s", n.name, strings.TrimSpace(out.String()))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	d.nodes = newFleet(ctx, d.log)
	defer func() {
		if serr := d.nodes.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	for _, n := range d.laptops {
		d.nodes.start(n.cfg)
	}
	fmt.Fprintf(d.out, "pgcourier runs on both laptops, shipping to http://%s; the community server is offline\n", addr)
	fmt.Fprintln(d.out)

	if err := d.fieldWork(ctx); err != nil {
		return err
	}
	if err := d.linkBack(ctx); err != nil {
		return err
	}
	return d.compare(ctx)
}

// step prints what it is doing, does it and prints how it went.
func (d *demo) step(what string, f func() error) error {
	fmt.Fprintf(d.out, "%s… ", what)
	start := time.Now()
	if err := f(); err != nil {
		fmt.Fprintln(d.out, "failed")
		return err
	}
	fmt.Fprintf(d.out, "done (%s)\n", seconds(time.Since(start)))
	return nil
}

// startClusters starts a cluster for every node at once and connects to
// each. A node keeps its cluster even when another one fails to start, so
// that the caller closes it.
func (d *demo) startClusters(ctx context.Context, nodes []*demoNode) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range nodes {
		g.Go(func() error {
			c, err := pgtest.New(gctx, pgtest.Options{Name: n.name})
			if err != nil {
				return fmt.Errorf("start a Postgres server for %s: %w", n.name, err)
			}
			n.cluster = c
			n.conn, err = pgx.Connect(gctx, c.URL())
			if err != nil {
				return fmt.Errorf("connect to %s's Postgres: %w", n.name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// configure writes every node's configuration file and the laptops' token
// files, as an operator would with "pgcourier token", and loads them. It
// returns the address the server listens on.
func (d *demo) configure() (string, error) {
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	var sources strings.Builder
	for _, n := range d.laptops {
		token, hash, err := newToken()
		if err != nil {
			return "", err
		}
		tokenFile := filepath.Join(d.dir, n.name+".token")
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("write %s's token: %w", n.name, err)
		}
		n.file = filepath.Join(d.dir, n.name+".toml")
		text := fmt.Sprintf(`# A field laptop: captures its own database and ships it to the server.
node = %q
role = "client"

[database]
url = %q

[capture]
tables = ["public.*"]

[[route]]
kind = "rest"
url = %q
token-file = %q
`, n.name, n.cluster.URL(), "http://"+addr, tokenFile)
		if err := os.WriteFile(n.file, []byte(text), 0o600); err != nil {
			return "", fmt.Errorf("write %s's configuration: %w", n.name, err)
		}
		fmt.Fprintf(&sources, "\n[[listen.source]]\nnode = %q\ntoken-sha256 = %q\n", n.name, hash)
	}
	s := d.server
	s.file = filepath.Join(d.dir, s.name+".toml")
	text := fmt.Sprintf(`# The community server: applies what the laptops send.
node = %q
role = "server"

[database]
url = %q

[listen]
addr = %q
%s`, s.name, s.cluster.URL(), addr, sources.String())
	if err := os.WriteFile(s.file, []byte(text), 0o600); err != nil {
		return "", fmt.Errorf("write %s's configuration: %w", s.name, err)
	}
	for _, n := range append(slices.Clone(d.laptops), s) {
		if n.cfg, err = config.Load(n.file); err != nil {
			return "", err
		}
	}
	return addr, nil
}

// fieldWork has a research assistant enter data on each laptop while the
// server is offline, and shows the laptops' outboxes filling until they hold
// everything entered.
func (d *demo) fieldWork(ctx context.Context) error {
	fmt.Fprintln(d.out, "research assistants enter data on both laptops…")
	ectx, cancel := context.WithCancel(ctx)
	entered := make(chan struct{})
	var entryErr error // set before entered is closed
	var g errgroup.Group
	for i, n := range d.laptops {
		g.Go(func() error { return enterFieldData(ectx, n.cluster.URL(), i+1, &n.work) })
	}
	go func() {
		entryErr = g.Wait()
		close(entered)
	}()
	defer func() {
		cancel()
		<-entered
	}()

	entering := true
	var deadline time.Time
	err := d.watch(ctx, func(ctx context.Context) (string, bool, error) {
		if entering {
			select {
			case <-entered:
				if entryErr != nil {
					return "", false, entryErr
				}
				entering = false
				deadline = time.Now().Add(demoCaptureTimeout)
			default:
			}
		}
		var parts []string
		done := !entering
		for _, n := range d.laptops {
			var batches, rows int64
			err := n.conn.QueryRow(ctx, `SELECT count(*), coalesce(sum(rows), 0) FROM pgcourier.outbox WHERE acked_at IS NULL`).
				Scan(&batches, &rows)
			if err != nil {
				return "", false, fmt.Errorf("read %s's outbox: %w", n.name, err)
			}
			parts = append(parts, fmt.Sprintf("%s %s (%s)", n.name, plural(batches, "batch", "batches"), plural(rows, "row change", "row changes")))
			if entering || rows < n.work.changes {
				done = false
			}
		}
		line := "  waiting in the outboxes: " + strings.Join(parts, " · ")
		if !entering && !done && time.Now().After(deadline) {
			return "", false, fmt.Errorf("capture did not pick up everything entered on the laptops within %s (%s)",
				demoCaptureTimeout, strings.TrimSpace(line))
		}
		return line, done, nil
	})
	if err != nil {
		return err
	}
	for _, n := range d.laptops {
		w := n.work
		fmt.Fprintf(d.out, "  %s: %d subjects enrolled and consented, %d visits, %d requisitions; %d weights corrected, %d re-consents, %d mistaken requisitions deleted\n",
			n.name, w.subjects, w.visits, w.requisitions, w.corrections, w.reconsents, w.deletions)
	}
	fmt.Fprintln(d.out, "  nothing has reached the server: every change waits in its laptop's outbox")
	fmt.Fprintln(d.out)
	return nil
}

// linkBack starts the server's node and shows the laptops catching up until
// the server has applied every batch and the laptops' outboxes are empty.
func (d *demo) linkBack(ctx context.Context) error {
	fmt.Fprintln(d.out, "the link comes back: pgcourier starts on the community server")
	up := time.Now()
	d.nodes.start(d.server.cfg)
	deadline := up.Add(demoCatchUpTimeout)
	var total int64
	err := d.watch(ctx, func(ctx context.Context) (string, bool, error) {
		applied := map[string]int64{}
		rows, err := d.server.conn.Query(ctx, `SELECT source, applied_seq FROM pgcourier.source_progress`)
		if err != nil {
			return "", false, fmt.Errorf("read the server's progress: %w", err)
		}
		for rows.Next() {
			var source string
			var seq int64
			if err := rows.Scan(&source, &seq); err != nil {
				return "", false, fmt.Errorf("read the server's progress: %w", err)
			}
			applied[source] = seq
		}
		if err := rows.Err(); err != nil {
			return "", false, fmt.Errorf("read the server's progress: %w", err)
		}
		done := true
		total = 0
		var parts []string
		for _, n := range d.laptops {
			var captured, pending int64
			err := n.conn.QueryRow(ctx, `
				SELECT (SELECT coalesce(max(next_seq) - 1, 0) FROM pgcourier.capture_state),
				       (SELECT count(*) FROM pgcourier.outbox WHERE acked_at IS NULL)`).Scan(&captured, &pending)
			if err != nil {
				return "", false, fmt.Errorf("read %s's outbox: %w", n.name, err)
			}
			total += captured
			parts = append(parts, fmt.Sprintf("%s %d/%d applied, %d pending", n.name, applied[n.name], captured, pending))
			if applied[n.name] < captured || pending > 0 {
				done = false
			}
		}
		line := "  on the server: " + strings.Join(parts, " · ")
		if !done && time.Now().After(deadline) {
			return "", false, fmt.Errorf("the server did not catch up with the laptops within %s (%s)%s",
				demoCatchUpTimeout, strings.TrimSpace(line), d.blocked(ctx))
		}
		return line, done, nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  caught up in %s: the server applied all %d batches and the laptops' outboxes are empty\n",
		seconds(time.Since(up)), total)
	fmt.Fprintln(d.out)
	return nil
}

// blocked returns why the server is stuck on a laptop's batches, if it says,
// as text to append to an error.
func (d *demo) blocked(ctx context.Context) string {
	rows, err := d.server.conn.Query(ctx, `SELECT source, seq, error, coalesce(hint, '') FROM pgcourier.blocked ORDER BY source`)
	if err != nil {
		return ""
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var source, msg, hint string
		var seq int64
		if rows.Scan(&source, &seq, &msg, &hint) != nil {
			return b.String()
		}
		fmt.Fprintf(&b, "; %s is blocked at seq %d: %s", source, seq, msg)
		if hint != "" {
			fmt.Fprintf(&b, " (%s)", hint)
		}
	}
	return b.String()
}

// compare checks the server's study tables against the union of the
// laptops', row by row, and prints the result for each table.
func (d *demo) compare(ctx context.Context) error {
	fmt.Fprintln(d.out, "comparing the server's tables with the laptops', row by row:")
	width := 0
	for _, t := range demoTables {
		width = max(width, len(t)+1)
	}
	differ := 0
	for _, table := range demoTables {
		want := map[string]string{}
		var counts []string
		var dup []string
		for _, n := range d.laptops {
			rows, err := tableRows(ctx, n.conn, table)
			if err != nil {
				return fmt.Errorf("read %s on %s: %w", table, n.name, err)
			}
			for k, v := range rows {
				if _, ok := want[k]; ok {
					dup = append(dup, k)
				}
				want[k] = v
			}
			counts = append(counts, fmt.Sprint(len(rows)))
		}
		got, err := tableRows(ctx, d.server.conn, table)
		if err != nil {
			return fmt.Errorf("read %s on the server: %w", table, err)
		}
		diffs := rowDiffs(want, got)
		for _, k := range dup {
			diffs = append(diffs, "on both laptops (the same key twice): "+k)
		}
		if len(diffs) == 0 {
			fmt.Fprintf(d.out, "  %-*s %3d rows on the server = %s from the laptops ✓\n",
				width, table+":", len(got), strings.Join(counts, " + "))
			continue
		}
		differ++
		fmt.Fprintf(d.out, "  %-*s %3d rows on the server, %s from the laptops, %d differences ✗\n",
			width, table+":", len(got), strings.Join(counts, " + "), len(diffs))
		for i, diff := range diffs {
			if i == 5 {
				fmt.Fprintf(d.out, "      … and %d more\n", len(diffs)-i)
				break
			}
			fmt.Fprintf(d.out, "      %s\n", diff)
		}
	}
	var conflicts int64
	if err := d.server.conn.QueryRow(ctx, `SELECT count(*) FROM pgcourier.conflicts`).Scan(&conflicts); err != nil {
		return fmt.Errorf("read the server's conflicts: %w", err)
	}
	if conflicts > 0 {
		fmt.Fprintf(d.out, "  the server recorded %d conflicts (pgcourier conflicts -c FILE lists them)\n", conflicts)
	}
	fmt.Fprintln(d.out)
	if differ > 0 {
		return fmt.Errorf("the server's tables differ from the laptops' in %d of %d tables (see above)", differ, len(demoTables))
	}
	return nil
}

// tableRows returns every row of a study table as text, by its key.
func tableRows(ctx context.Context, conn *pgx.Conn, table string) (map[string]string, error) {
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT t.id::text, t::text FROM public.%s t ORDER BY t.id`, pgx.Identifier{table}.Sanitize()))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		m[k] = v
	}
	return m, rows.Err()
}

// rowDiffs describes how got differs from want, in key order.
func rowDiffs(want, got map[string]string) []string {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok && !yield(k) {
				return
			}
		}
	})
	var diffs []string
	for _, k := range keys {
		w, inWant := want[k]
		g, inGot := got[k]
		switch {
		case !inGot:
			diffs = append(diffs, "missing on the server: "+w)
		case !inWant:
			diffs = append(diffs, "only on the server: "+g)
		case w != g:
			diffs = append(diffs, fmt.Sprintf("differs: laptop %s, server %s", w, g))
		}
	}
	return diffs
}

// watch polls every demoTick until poll reports done or fails, showing the
// line poll returns: rewritten in place on a terminal; otherwise printed
// when it changes, at most once a second, and once more at the end. It also
// fails as soon as a node stops by itself.
func (d *demo) watch(ctx context.Context, poll func(context.Context) (line string, done bool, err error)) error {
	tick := time.NewTicker(demoTick)
	defer tick.Stop()
	var shown string
	var shownAt time.Time
	for {
		line, done, err := poll(ctx)
		if err == nil {
			err = d.nodes.failed()
		}
		if err != nil {
			d.endLine()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		switch {
		case d.live:
			fmt.Fprintf(d.out, "\r\x1b[K%s", line)
			d.midLine = true
		case line != shown && (done || time.Since(shownAt) >= time.Second):
			fmt.Fprintln(d.out, line)
			shown, shownAt = line, time.Now()
		}
		if done {
			d.endLine()
			return nil
		}
		select {
		case <-ctx.Done():
			d.endLine()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// endLine ends a progress line left on the screen.
func (d *demo) endLine() {
	if d.midLine {
		fmt.Fprintln(d.out)
		d.midLine = false
	}
}

// fieldWork is what a research assistant entered on a laptop.
type fieldWork struct {
	subjects, visits, requisitions     int
	corrections, reconsents, deletions int
	changes                            int64 // row changes, as capture counts them
}

// assistant enters a day's forms on one laptop, each form in a transaction
// of its own, as the data entry app would.
type assistant struct {
	conn      *pgx.Conn
	rng       *rand.Rand
	laptop    int
	work      *fieldWork
	subjects  []string // ids
	visits    []string
	reqs      []string
	specimens int
}

var (
	demoNotes  = []string{"", "", "", "fasting since last night", "reports a mild headache", "came with a caregiver", "rescheduled once"}
	demoPanels = []string{"CD4", "Viral load", "Full blood count", "Chemistry"}
)

// enterFieldData enters a research assistant's work on laptop number
// laptop: enrolment with consent and a first visit for every subject,
// follow-up visits, then corrections. It records what it did in w.
func enterFieldData(ctx context.Context, url string, laptop int, w *fieldWork) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to laptop %d's database: %w", laptop, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	a := &assistant{
		conn:   conn,
		rng:    rand.New(rand.NewPCG(uint64(laptop), 2016)),
		laptop: laptop,
		work:   w,
	}
	for i := 1; i <= demoSubjects; i++ {
		if err := a.enrol(ctx, i); err != nil {
			return err
		}
		if err := a.visit(ctx, a.subjects[i-1], "1000", 1+a.rng.IntN(2)); err != nil {
			return err
		}
	}
	for _, s := range a.subjects {
		if err := a.visit(ctx, s, "2000", a.rng.IntN(2)); err != nil {
			return err
		}
		if a.rng.IntN(3) == 0 {
			if err := a.visit(ctx, s, "3000", 1); err != nil {
				return err
			}
		}
	}
	for _, v := range pick(a.rng, a.visits, 8) {
		err := a.form(ctx, func(tx pgx.Tx) error {
			delta := []string{"-2.0", "-1.5", "1.0", "2.5"}[a.rng.IntN(4)]
			return a.exec(ctx, tx, `
				UPDATE visits
				   SET weight = weight + $2::text::numeric,
				       notes = concat_ws('; ', nullif(notes, ''), 'weight corrected: the scale was not zeroed')
				 WHERE id = $1`, v, delta)
		})
		if err != nil {
			return fmt.Errorf("correct a weight on laptop %d: %w", laptop, err)
		}
		w.corrections++
	}
	for _, s := range pick(a.rng, a.subjects, 5) {
		err := a.form(ctx, func(tx pgx.Tx) error {
			return a.exec(ctx, tx, `UPDATE consents SET version = '2', consented_at = now() WHERE subject = $1`, s)
		})
		if err != nil {
			return fmt.Errorf("record a re-consent on laptop %d: %w", laptop, err)
		}
		w.reconsents++
	}
	for _, r := range pick(a.rng, a.reqs, 2) {
		err := a.form(ctx, func(tx pgx.Tx) error {
			return a.exec(ctx, tx, `DELETE FROM requisitions WHERE id = $1`, r)
		})
		if err != nil {
			return fmt.Errorf("delete a requisition on laptop %d: %w", laptop, err)
		}
		w.deletions++
		w.requisitions--
	}
	return nil
}

// enrol saves the screening and consent forms of the laptop's i-th subject.
func (a *assistant) enrol(ctx context.Context, i int) error {
	var id string
	err := a.form(ctx, func(tx pgx.Tx) error {
		dob := time.Date(1960+a.rng.IntN(45), time.Month(1+a.rng.IntN(12)), 1+a.rng.IntN(28), 0, 0, 0, 0, time.UTC)
		gender := []string{"F", "M"}[a.rng.IntN(2)]
		err := tx.QueryRow(ctx, `
			INSERT INTO subjects (subject_identifier, dob, gender)
			VALUES ($1, $2, $3)
			RETURNING id::text`, fmt.Sprintf("066-%02d%04d", a.laptop, i), dob, gender).Scan(&id)
		if err != nil {
			return err
		}
		a.work.changes++
		return a.exec(ctx, tx, `INSERT INTO consents (subject, version, consented_at) VALUES ($1, '1', now())`, id)
	})
	if err != nil {
		return fmt.Errorf("enrol a subject on laptop %d: %w", a.laptop, err)
	}
	a.subjects = append(a.subjects, id)
	a.work.subjects++
	return nil
}

// visit saves a visit report of subject with its requisitions.
func (a *assistant) visit(ctx context.Context, subject, code string, requisitions int) error {
	var visit string
	var reqs []string
	err := a.form(ctx, func(tx pgx.Tx) error {
		reqs = reqs[:0]
		weight := fmt.Sprintf("%.1f", 45+a.rng.Float64()*50)
		var notes any
		if n := demoNotes[a.rng.IntN(len(demoNotes))]; n != "" {
			notes = n
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO visits (subject, visit_code, report_datetime, weight, notes)
			VALUES ($1, $2, now(), $3::text::numeric, $4)
			RETURNING id::text`, subject, code, weight, notes).Scan(&visit)
		if err != nil {
			return err
		}
		a.work.changes++
		for _, p := range a.rng.Perm(len(demoPanels))[:requisitions] {
			var id string
			a.specimens++
			err := tx.QueryRow(ctx, `
				INSERT INTO requisitions (visit, panel, drawn_at, specimen_id)
				VALUES ($1, $2, now(), $3)
				RETURNING id::text`, visit, demoPanels[p], fmt.Sprintf("SP%02d%05d", a.laptop, a.specimens)).Scan(&id)
			if err != nil {
				return err
			}
			a.work.changes++
			reqs = append(reqs, id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save a visit on laptop %d: %w", a.laptop, err)
	}
	a.visits = append(a.visits, visit)
	a.reqs = append(a.reqs, reqs...)
	a.work.visits++
	a.work.requisitions += len(reqs)
	return nil
}

// form saves one form in a transaction, then pauses as a person would.
func (a *assistant) form(ctx context.Context, f func(pgx.Tx) error) error {
	before := a.work.changes
	if err := pgx.BeginFunc(ctx, a.conn, f); err != nil {
		a.work.changes = before
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(demoPace):
		return nil
	}
}

// exec runs a statement that changes exactly one row, and counts it.
func (a *assistant) exec(ctx context.Context, tx pgx.Tx, sql string, args ...any) error {
	tag, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("%s changed %d rows, want 1", tag.String(), tag.RowsAffected())
	}
	a.work.changes++
	return nil
}

// pick returns n different elements of s, chosen by rng.
func pick(rng *rand.Rand, s []string, n int) []string {
	n = min(n, len(s))
	out := make([]string, 0, n)
	for _, i := range rng.Perm(len(s))[:n] {
		out = append(out, s[i])
	}
	return out
}

// fleet runs nodes in-process until it is stopped.
type fleet struct {
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	nodes  []*nodeRun
}

// nodeRun is one node running in a goroutine.
type nodeRun struct {
	name string
	done chan struct{}
	err  error // runNode's result, set before done is closed
}

func newFleet(ctx context.Context, log *slog.Logger) *fleet {
	ctx, cancel := context.WithCancel(ctx)
	return &fleet{ctx: ctx, cancel: cancel, log: log}
}

// start runs cfg's node until the fleet is stopped.
func (f *fleet) start(cfg *config.Config) {
	n := &nodeRun{name: cfg.Node, done: make(chan struct{})}
	f.nodes = append(f.nodes, n)
	go func() {
		defer close(n.done)
		n.err = runNode(f.ctx, cfg, f.log)
	}()
}

// failed returns an error if a node has stopped although the fleet has not
// been stopped.
func (f *fleet) failed() error {
	for _, n := range f.nodes {
		select {
		case <-n.done:
			if n.err != nil {
				return fmt.Errorf("pgcourier on %s stopped: %w", n.name, n.err)
			}
			return fmt.Errorf("pgcourier on %s stopped by itself", n.name)
		default:
		}
	}
	return nil
}

// stop stops every node and waits for them, each for demoStopTimeout at
// most. It returns an error if one failed or did not stop in time.
func (f *fleet) stop() error {
	f.cancel()
	var errs []error
	for _, n := range f.nodes {
		select {
		case <-n.done:
			if n.err != nil && !errors.Is(n.err, context.Canceled) {
				errs = append(errs, fmt.Errorf("pgcourier on %s: %w", n.name, n.err))
			}
		case <-time.After(demoStopTimeout):
			errs = append(errs, fmt.Errorf("pgcourier on %s did not stop within %s", n.name, demoStopTimeout))
		}
	}
	return errors.Join(errs...)
}

// logBuffer keeps the nodes' logs in memory, to show the end of them when
// the demo fails. It is safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// tail returns the last n lines written.
func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := strings.SplitAfter(b.buf.String(), "\n")
	if last := len(lines) - 1; lines[last] == "" {
		lines = lines[:last]
	}
	return strings.Join(lines[max(len(lines)-n, 0):], "")
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return addr, nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// plural formats n with the singular or plural noun, such as "1 batch".
func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// seconds formats d as seconds with one decimal, such as "12.3s".
func seconds(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}
