// Command bench measures how fast changes travel from one Postgres to
// another: Postgres's own logical replication (the baseline), the ceilings
// of decoding (pg_recvlogical) and of loading (COPY), pgcourier's capture,
// and pgcourier's REST and postgres routes end to end, side by side on
// fresh clusters in one run, so that every claim is a ratio measured on the
// same machine at the same time.
//
// Usage, from the module root:
//
//	go run ./bench [-quick] [-workloads W1,W3] [-contenders native,copy] [-out DIR] [-cpuprofile DIR]
//
// It prints a Markdown table on stdout and progress on stderr. A full run
// writes benchmarks.md and benchmarks.json into -out (docs by default); a
// -quick run (tiny workloads, seconds) writes only when -out is given.
// docs/benchmarks.md explains the method.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// options are the command line, parsed.
type options struct {
	quick      bool
	workloads  []string // ids, in report order; all when empty
	contenders []string // names, in report order; all when empty
	out        string   // directory for benchmarks.md and .json; "" writes nothing
	parallel   int      // scenarios run at once
	cpuprofile string   // directory for CPU profiles of pgcourier's processes; "" writes none
	draws      int      // runs of each catch-up scenario (see catchUpDraws)
	args       []string // the command line, for the report
}

func main() {
	if code, ok := runChild(); ok {
		os.Exit(code)
	}
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// parseFlags parses the command line.
func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "tiny workloads for a smoke test: seconds, figures meaningless; writes nothing unless -out is given")
	wl := fs.String("workloads", "", "comma-separated workloads to run, e.g. W1,W3 (default all)")
	cl := fs.String("contenders", "", "comma-separated contenders to run, e.g. native,copy (default all)")
	out := fs.String("out", "docs", "directory to write benchmarks.md and benchmarks.json into")
	parallel := fs.Int("parallel", 1, "scenarios to run at once; more than 1 skews the figures (default 3 with -quick)")
	cpuprofile := fs.String("cpuprofile", "", "directory to write a CPU profile of pgcourier's process in each scenario into, as WORKLOAD-CONTENDER.pprof")
	draws := fs.Int("draws", 3, "runs of each catch-up scenario (W7 and W8 against native-offline, rest and postgres), compared by their medians (default 1 with -quick)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./bench [flags]\n\nworkloads:\n")
		for _, w := range workloads {
			fmt.Fprintf(fs.Output(), "  %s  %s\n", w.id, w.title)
		}
		fmt.Fprintf(fs.Output(), "contenders:\n")
		for _, c := range contenders {
			fmt.Fprintf(fs.Output(), "  %s\n", c.name)
		}
		fmt.Fprintf(fs.Output(), "flags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := options{quick: *quick, out: *out, parallel: *parallel, cpuprofile: *cpuprofile, draws: *draws, args: args}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["out"] {
			o.out = ""
		}
		if !set["parallel"] {
			o.parallel = 3
		}
		if !set["draws"] {
			o.draws = 1
		}
	}
	if o.parallel < 1 {
		return options{}, fmt.Errorf("-parallel %d: must be at least 1", o.parallel)
	}
	if o.draws < 1 {
		return options{}, fmt.Errorf("-draws %d: must be at least 1", o.draws)
	}
	var known []string
	for _, w := range workloads {
		known = append(known, w.id)
	}
	var err error
	if o.workloads, err = pick(*wl, known, "workload"); err != nil {
		return options{}, err
	}
	known = known[:0]
	for _, c := range contenders {
		known = append(known, c.name)
	}
	if o.contenders, err = pick(*cl, known, "contender"); err != nil {
		return options{}, err
	}
	return o, nil
}

// pick parses a comma-separated selection of known names and returns it in
// the order of known; an empty list selects all.
func pick(list string, known []string, what string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return slices.Clone(known), nil
	}
	want := map[string]bool{}
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		i := slices.IndexFunc(known, func(k string) bool { return strings.EqualFold(k, s) })
		if i < 0 {
			return nil, fmt.Errorf("unknown %s %q (known: %s)", what, s, strings.Join(known, ", "))
		}
		want[known[i]] = true
	}
	var out []string
	for _, k := range known {
		if want[k] {
			out = append(out, k)
		}
	}
	return out, nil
}

// run runs every selected scenario, prints the table on stdout and writes
// the report files. It returns an error if any scenario failed, after
// reporting the others.
func run(ctx context.Context, opts options, stdout, stderr io.Writer) error {
	if os.Getenv("PGCOURIER_TEST_DATABASES") != "" {
		return errors.New("the benchmark needs local clusters of its own (it reads their processes' CPU in /proc): unset PGCOURIER_TEST_DATABASES")
	}
	log := &progress{w: stderr, start: time.Now()}
	rep, err := newReport(opts)
	if err != nil {
		return err
	}
	sz := fullSizes
	if opts.quick {
		sz = quickSizes
	}
	if opts.cpuprofile != "" {
		if err := os.MkdirAll(opts.cpuprofile, 0o755); err != nil {
			return err
		}
	}
	type job struct {
		w    *workload
		ce   contenderEntry
		draw int
	}
	var jobs, again []job
	for _, w := range workloads {
		for _, ce := range contenders {
			if ce.name == "native-offline" && !w.backlog {
				continue // with the link up throughout it is native
			}
			if !slices.Contains(opts.workloads, w.id) || !slices.Contains(opts.contenders, ce.name) {
				continue
			}
			if opts.draws == 1 || !catchUpDraw(w.id, ce.name) {
				jobs = append(jobs, job{w, ce, 0})
				continue
			}
			jobs = append(jobs, job{w, ce, 1})
			for d := 2; d <= opts.draws; d++ {
				again = append(again, job{w, ce, d})
			}
		}
	}
	// The repeats run last, away from the first draws, so that a stretch
	// of load on the machine does not weigh on every draw of one scenario.
	slices.SortStableFunc(again, func(a, b job) int { return a.draw - b.draw })
	jobs = append(jobs, again...)
	rep.Results = make([]result, len(jobs))
	var (
		wg     sync.WaitGroup
		slots  = make(chan struct{}, opts.parallel)
		mu     sync.Mutex
		failed []string
	)
	for i, j := range jobs {
		slots <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-slots }()
			name := j.ce.name
			if j.draw > 0 {
				name = fmt.Sprintf("%s #%d", name, j.draw)
			}
			log.printf("%s %s: %s, %s rows", j.w.id, name, j.w.title, commas(float64(sz.rows[j.w.id])))
			res, err := runScenario(ctx, j.w, j.ce, sz, opts.cpuprofile, log)
			res.Draw = j.draw
			if err != nil {
				res.Error = err.Error()
				mu.Lock()
				failed = append(failed, j.w.id+" "+j.ce.name)
				mu.Unlock()
				if ctx.Err() == nil {
					log.printf("%s %s: FAILED: %v", j.w.id, j.ce.name, err)
				}
			}
			rep.Results[i] = res
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	rep.order()
	rep.finish(sz, time.Since(log.start))
	if err := rep.markdown(stdout, false); err != nil {
		return err
	}
	if opts.out != "" {
		if err := rep.write(opts.out); err != nil {
			return err
		}
		log.printf("wrote %s and %s", filepath.Join(opts.out, "benchmarks.md"), filepath.Join(opts.out, "benchmarks.json"))
	}
	log.printf("done in %s", time.Since(log.start).Round(time.Second))
	if len(failed) > 0 {
		return fmt.Errorf("%d scenario(s) failed: %s", len(failed), strings.Join(failed, ", "))
	}
	return nil
}

// progress prints timestamped progress lines.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}
