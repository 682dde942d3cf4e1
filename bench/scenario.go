package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgcourier/pgcourier/internal/pgtest"
)

// clusterSettings are the postgresql.conf settings of every benchmark
// cluster, on top of pgtest's (wal_level=logical, fsync=off,
// full_page_writes=off, …): buffers big enough for the largest workload and
// no checkpoint in the middle of a measurement. Everything else, such as
// logical_decoding_work_mem (64MB), keeps Postgres's default.
var clusterSettings = map[string]string{
	"shared_buffers":     "256MB",
	"max_wal_size":       "8GB",
	"checkpoint_timeout": "30min",
}

// result holds every figure of one scenario. Pointers are null in JSON (and
// "—" in the table) where a figure does not apply.
type result struct {
	Workload  string `json:"workload"`
	Contender string `json:"contender"`
	// Draw numbers the repeats of a catch-up scenario (see catchUpDraws),
	// from 1; 0 for a scenario run once.
	Draw int    `json:"draw,omitempty"`
	Mode string `json:"mode"` // live or backlog
	// Rows is what the contender carried in the timed window: the
	// workload's row changes, or for copy the final rows it copied.
	Rows int64 `json:"rows"`
	// Changes is the row changes the workload committed in the window.
	Changes int64 `json:"changes"`
	// OfferedRowsPerS is the pace of the workload itself: changes from
	// its first statement to its last commit.
	OfferedRowsPerS float64 `json:"offered_rows_per_s"`
	// Seconds is the timed window: first commit (live) or link up
	// (backlog) to the last row arrived.
	Seconds    float64  `json:"seconds"`
	RowsPerS   float64  `json:"rows_per_s"`
	VsNative   *float64 `json:"vs_native"`
	LagOffered *float64 `json:"lag_offered_rows_per_s"`
	LagP50Ms   *float64 `json:"lag_p50_ms"`
	LagP99Ms   *float64 `json:"lag_p99_ms"`
	// FlatLagP50Ms and FlatLagP99Ms are the lag of a sample of the rows of
	// the timed stretch, committed flat out, for the workloads with a lag
	// stretch (W1) in live mode.
	FlatLagP50Ms *float64 `json:"flat_out_lag_p50_ms"`
	FlatLagP99Ms *float64 `json:"flat_out_lag_p99_ms"`
	// FirstRowMs is, in backlog mode, the time from link up to the first
	// row applied at the target, for the contenders that apply there.
	FirstRowMs *float64 `json:"first_row_ms"`
	CPUSeconds float64  `json:"cpu_s"`
	// CPUSecondsBy splits CPUSeconds by kind of process: walsender, apply
	// worker, backend, apply backend, pg_recvlogical, pgcourier capture,
	// pgcourier client, pgcourier server.
	CPUSecondsBy map[string]float64 `json:"cpu_s_by_process,omitempty"`
	// CPUPerMRows is CPU seconds per million rows carried.
	CPUPerMRows *float64 `json:"cpu_s_per_million_rows"`
	// PeakRSS is the peak RSS in bytes of each of the contender's own
	// processes; empty when its work happens inside Postgres.
	PeakRSS         map[string]int64 `json:"peak_rss_bytes,omitempty"`
	WireBytes       int64            `json:"wire_bytes"`
	WireBytesPerRow *float64         `json:"wire_bytes_per_row"`
	// SpillBytes is what logical decoding spilled to disk on the source
	// (pg_stat_replication_slots).
	SpillBytes int64 `json:"spill_bytes"`
	// LoadAvg is the machine's 1-minute load average when the scenario
	// ended: how much else was running.
	LoadAvg float64 `json:"load_avg_1m"`
	Error   string  `json:"error,omitempty"`
}

// cleanupTimeout bounds the cleanup after a scenario, which runs even when
// the run is interrupted.
const cleanupTimeout = 30 * time.Second

// runScenario runs workload w against contender ce on fresh clusters and
// returns its figures. With profileDir set, a contender that runs pgcourier
// writes a CPU profile of it there. Everything it starts is stopped and
// removed before it returns, whatever happens.
func runScenario(ctx context.Context, w *workload, ce contenderEntry, sz sizes, profileDir string, log *progress) (res result, err error) {
	res = result{Workload: w.id, Contender: ce.name}
	src, dst, err := newClusters(ctx, w.id+"-"+ce.name)
	if err != nil {
		return res, err
	}
	defer func() {
		err = errors.Join(err, src.Close(), dst.Close())
	}()
	e, err := newEnv(ctx, src, dst, w.tables)
	if err != nil {
		return res, err
	}
	defer e.close()
	if profileDir != "" {
		e.cpuProfile = filepath.Join(profileDir, w.id+"-"+ce.name+".pprof")
	}
	if w.seed != nil {
		if err := seed(ctx, e, w, sz.rows[w.id]); err != nil {
			return res, err
		}
	}

	c := ce.make()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if cerr := c.close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close %s: %w", ce.name, cerr))
		}
	}()
	if err := c.prepare(ctx, e); err != nil {
		return res, fmt.Errorf("prepare %s: %w", ce.name, err)
	}
	s := &scenario{w: w, name: ce.name, sz: sz, log: log, e: e, c: c, g: newGenerator(e.srcURL, sz)}
	var win window
	if !w.backlog && c.live() {
		res.Mode = "live"
		win, err = s.live(ctx, &res)
	} else {
		res.Mode = "backlog"
		win, err = s.backlog(ctx)
	}
	if err != nil {
		return res, err
	}
	if err := s.figures(ctx, win, &res); err != nil {
		return res, err
	}
	if err := c.check(ctx); err != nil {
		return res, fmt.Errorf("%s: %w", ce.name, err)
	}
	return res, nil
}

// scenario is one workload meeting one contender on prepared clusters.
type scenario struct {
	w      *workload
	name   string // the contender's
	sz     sizes
	log    *progress
	e      *env
	c      contender
	g      *generator
	marker int64 // the last marker id used
}

// window is the timed stretch of a scenario and the readings around it.
type window struct {
	gen  genStats  // the workload's stretch
	from time.Time // start of the window: first commit or link up
	arr  arrival   // its end, as the contender reports it
	u0   usage     // readings at the start
}

// live runs the workload while the contender replicates: the lag stretch
// first if the workload has one, then the timed stretch.
func (s *scenario) live(ctx context.Context, res *result) (window, error) {
	var win window
	if err := s.c.start(ctx); err != nil {
		return win, fmt.Errorf("start %s: %w", s.name, err)
	}
	if s.w.lagStretch {
		st, err := s.g.paced(ctx, s.sz.lagRate, s.sz.lagFor)
		if err != nil {
			return win, err
		}
		a, err := s.closeStretch(ctx, st, 1)
		if err != nil {
			return win, err
		}
		p50, ok50 := percentile(a.lags, 50)
		p99, ok99 := percentile(a.lags, 99)
		if ok50 && ok99 {
			res.LagOffered = ptr(st.rate())
			res.LagP50Ms = ptr(p50.Seconds() * 1e3)
			res.LagP99Ms = ptr(p99.Seconds() * 1e3)
			s.log.printf("%s %s: lag at %s rows/s offered: p50 %.1f ms, p99 %.1f ms",
				s.w.id, s.name, commas(st.rate()), *res.LagP50Ms, *res.LagP99Ms)
		}
	}
	var err error
	if win.u0, err = s.c.usage(); err != nil {
		return win, err
	}
	if win.gen, err = s.w.run(ctx, s.g, s.sz.rows[s.w.id]); err != nil {
		return win, err
	}
	win.from = win.gen.start
	// The timed stretch of a workload with a lag stretch is lagged too,
	// on a sample of its rows: the lag while the source commits flat out.
	var every int64
	if s.w.lagStretch {
		every = max(win.gen.changes/flatLagSamples, 1)
	}
	if win.arr, err = s.closeStretch(ctx, win.gen, every); err != nil {
		return win, err
	}
	p50, ok50 := percentile(win.arr.lags, 50)
	p99, ok99 := percentile(win.arr.lags, 99)
	if ok50 && ok99 {
		res.FlatLagP50Ms = ptr(p50.Seconds() * 1e3)
		res.FlatLagP99Ms = ptr(p99.Seconds() * 1e3)
		s.log.printf("%s %s: lag flat out (%d rows sampled): p50 %.1f ms, p99 %.1f ms",
			s.w.id, s.name, len(win.arr.lags), *res.FlatLagP50Ms, *res.FlatLagP99Ms)
	}
	return win, nil
}

// flatLagSamples is about how many rows of a flat-out stretch have their
// lag taken: every n/flatLagSamples-th subject of n.
const flatLagSamples = 10_000

// backlog runs the workload with the link down, then brings the link up
// and times the catch-up.
func (s *scenario) backlog(ctx context.Context) (window, error) {
	var win window
	var err error
	if win.gen, err = s.w.run(ctx, s.g, s.sz.rows[s.w.id]); err != nil {
		return win, err
	}
	st, err := s.commitMarker(ctx, win.gen, 0)
	if err != nil {
		return win, err
	}
	if f, ok := s.c.(backlogFiller); ok {
		fctx, cancel := context.WithTimeout(ctx, s.sz.phaseLimit)
		err := f.filled(fctx, st)
		cancel()
		if err != nil {
			return win, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if win.u0, err = s.c.usage(); err != nil {
		return win, err
	}
	win.from = time.Now()
	if err := s.c.start(ctx); err != nil {
		return win, fmt.Errorf("start %s: %w", s.name, err)
	}
	st.since = win.from
	win.arr, err = s.wait(ctx, st)
	return win, err
}

// commitMarker closes a stretch of workload with the next marker. With
// lagEvery above 0 the stretch asks for the lag of every lagEvery-th of its
// subjects.
func (s *scenario) commitMarker(ctx context.Context, gen genStats, lagEvery int64) (stretch, error) {
	s.marker++
	if err := insertMarker(ctx, s.e.srcURL, s.marker); err != nil {
		return stretch{}, err
	}
	return stretch{marker: s.marker, changes: gen.changes, lag: lagEvery > 0, lagLo: gen.lo, lagHi: gen.hi, lagEvery: lagEvery}, nil
}

// wait waits, for at most phaseLimit, for the contender to report st.
func (s *scenario) wait(ctx context.Context, st stretch) (arrival, error) {
	ctx, cancel := context.WithTimeout(ctx, s.sz.phaseLimit)
	defer cancel()
	a, err := s.c.wait(ctx, st)
	if err != nil {
		return a, fmt.Errorf("%s: %w", s.name, err)
	}
	return a, nil
}

// closeStretch commits the marker after a stretch and waits for it.
func (s *scenario) closeStretch(ctx context.Context, gen genStats, lagEvery int64) (arrival, error) {
	st, err := s.commitMarker(ctx, gen, lagEvery)
	if err != nil {
		return arrival{}, err
	}
	return s.wait(ctx, st)
}

// figures fills res from the timed window.
func (s *scenario) figures(ctx context.Context, win window, res *result) error {
	u1, err := s.c.usage()
	if err != nil {
		return err
	}
	res.Changes = win.gen.changes
	res.OfferedRowsPerS = win.gen.rate()
	res.Rows = win.arr.rows
	res.Seconds = win.arr.at.Sub(win.from).Seconds()
	if res.Seconds <= 0 || res.Rows <= 0 {
		return fmt.Errorf("%s: %d rows in %.3f s", s.name, res.Rows, res.Seconds)
	}
	res.RowsPerS = float64(res.Rows) / res.Seconds
	if !win.arr.first.IsZero() {
		res.FirstRowMs = ptr(win.arr.first.Sub(win.from).Seconds() * 1e3)
		s.log.printf("%s %s: first row applied %.0f ms after link up", s.w.id, s.name, *res.FirstRowMs)
	}
	res.CPUSeconds = (u1.cpu - win.u0.cpu).Seconds()
	var split []string
	for _, k := range slices.Sorted(maps.Keys(u1.cpuBy)) {
		if res.CPUSecondsBy == nil {
			res.CPUSecondsBy = map[string]float64{}
		}
		res.CPUSecondsBy[k] = (u1.cpuBy[k] - win.u0.cpuBy[k]).Seconds()
		split = append(split, fmt.Sprintf("%s %.2f", k, res.CPUSecondsBy[k]))
	}
	res.CPUPerMRows = ptr(res.CPUSeconds / float64(res.Rows) * 1e6)
	if len(u1.peak) > 0 {
		res.PeakRSS = u1.peak
	}
	res.LoadAvg = loadAvg()
	res.WireBytes = u1.wire - win.u0.wire
	res.WireBytesPerRow = ptr(float64(res.WireBytes) / float64(res.Rows))
	if res.SpillBytes, err = slotSpill(ctx, s.e.srcURL); err != nil {
		return err
	}
	s.log.printf("%s %s: %s changes committed at %s rows/s; %s rows arrived in %.2f s: %s rows/s; CPU %.2f s (%s)", s.w.id, s.name,
		commas(float64(win.gen.changes)), commas(res.OfferedRowsPerS), commas(float64(res.Rows)), res.Seconds, commas(res.RowsPerS),
		res.CPUSeconds, strings.Join(split, ", "))
	return nil
}

// newClusters starts a fresh source and target side by side.
func newClusters(ctx context.Context, name string) (src, dst *pgtest.Cluster, err error) {
	var g errgroup.Group
	g.Go(func() (err error) {
		src, err = pgtest.New(ctx, pgtest.Options{Name: name + "-src", Settings: clusterSettings})
		return err
	})
	g.Go(func() (err error) {
		dst, err = pgtest.New(ctx, pgtest.Options{Name: name + "-dst", Settings: clusterSettings})
		return err
	})
	if err := g.Wait(); err != nil {
		for _, c := range []*pgtest.Cluster{src, dst} {
			if c != nil {
				c.Close()
			}
		}
		return nil, nil, err
	}
	return src, dst, nil
}

// newEnv creates the schema on both clusters.
func newEnv(ctx context.Context, src, dst *pgtest.Cluster, tables []string) (*env, error) {
	e := &env{src: src, dst: dst, tables: tables, srcURL: src.DatabaseURL(dbName), dstURL: dst.DatabaseURL(dbName)}
	var err error
	if err := createSchema(ctx, e); err != nil {
		return nil, err
	}
	if e.dir, err = os.MkdirTemp("", "pgcourier-bench-"); err != nil {
		return nil, err
	}
	return e, nil
}

// close removes the scenario's scratch directory.
func (e *env) close() {
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// seed fills the source with the workload's seed rows and copies them to the
// target as they are, before any contender starts.
func seed(ctx context.Context, e *env, w *workload, n int64) error {
	src, err := pgx.Connect(ctx, e.srcURL)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := pgx.Connect(ctx, e.dstURL)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	if err := w.seed(ctx, src, n); err != nil {
		return err
	}
	for _, t := range allTables {
		if _, err := copyTable(ctx, src, dst, t); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	for _, conn := range []*pgx.Conn{src, dst} {
		if _, err := conn.Exec(ctx, "VACUUM ANALYZE"); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
