package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgcourier/pgcourier/internal/pgtest"
	"github.com/pgcourier/pgcourier/router"
)

// report is everything one run measured, as written to benchmarks.json.
type report struct {
	Generated  time.Time         `json:"generated"`
	Command    string            `json:"command"`
	Quick      bool              `json:"quick"`
	RunSeconds float64           `json:"run_seconds"`
	Machine    machine           `json:"machine"`
	Settings   map[string]string `json:"postgres_settings"`
	Sizes      sizesInfo         `json:"sizes"`
	Workloads  []workloadInfo    `json:"workloads"`
	Contenders []contenderInfo   `json:"contenders"`
	Results    []result          `json:"results"`
}

// machine describes where the run happened.
type machine struct {
	Cores       int    `json:"cores"`
	MemoryBytes int64  `json:"memory_bytes"`
	CPU         string `json:"cpu"`
	Kernel      string `json:"kernel"`
	Postgres    string `json:"postgres"`
	Go          string `json:"go"`
}

// sizesInfo is the scale of the run's workloads.
type sizesInfo struct {
	Clients        int              `json:"clients"`
	Importers      int              `json:"importers"`
	ImportTxRows   int64            `json:"import_transaction_rows"`
	LagRowsPerS    int              `json:"lag_offered_rows_per_s"`
	LagSeconds     float64          `json:"lag_seconds"`
	RowsByWorkload map[string]int64 `json:"rows"`
}

// workloadInfo describes a workload of the run.
type workloadInfo struct {
	ID      string `json:"id"`
	Title   string `json:"title"`
	About   string `json:"about"`
	Backlog bool   `json:"backlog"`
}

// contenderInfo describes a contender of the run.
type contenderInfo struct {
	Name  string `json:"name"`
	About string `json:"about"`
}

// newReport starts the report of a run with the facts known up front.
func newReport(opts options) (*report, error) {
	m, err := machineFacts()
	if err != nil {
		return nil, err
	}
	r := &report{
		Generated: time.Now().UTC(),
		Command:   strings.TrimSpace("go run ./bench " + strings.Join(opts.args, " ")),
		Quick:     opts.quick,
		Machine:   m,
		Settings:  maps.Clone(clusterSettings),
	}
	for _, w := range workloads {
		if slices.Contains(opts.workloads, w.id) {
			r.Workloads = append(r.Workloads, workloadInfo{ID: w.id, Title: w.title, About: w.about, Backlog: w.backlog})
		}
	}
	for _, c := range contenders {
		if slices.Contains(opts.contenders, c.name) {
			r.Contenders = append(r.Contenders, contenderInfo{Name: c.name, About: c.about})
		}
	}
	return r, nil
}

// finish records the sizes and run time and takes every ratio to native.
func (r *report) finish(sz sizes, took time.Duration) {
	r.RunSeconds = math.Round(took.Seconds()*10) / 10
	r.Sizes = sizesInfo{
		Clients: sz.clients, Importers: sz.importers, ImportTxRows: sz.importTx,
		LagRowsPerS: sz.lagRate, LagSeconds: sz.lagFor.Seconds(), RowsByWorkload: map[string]int64{},
	}
	for _, w := range r.Workloads {
		r.Sizes.RowsByWorkload[w.ID] = sz.rows[w.ID]
	}
	base := map[string]float64{}
	for _, res := range r.Results {
		if res.Contender == "native" && res.Error == "" {
			base[res.Workload] = res.RowsPerS
		}
	}
	for i := range r.Results {
		res := &r.Results[i]
		if b, ok := base[res.Workload]; ok && res.Error == "" && b > 0 {
			res.VsNative = ptr(res.RowsPerS / b)
		}
	}
}

// machineFacts reads the machine's cores, memory, CPU, kernel and the
// versions of Postgres and Go.
func machineFacts() (machine, error) {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	m.MemoryBytes = meminfoTotal()
	m.CPU = cpuModel()
	bin, err := pgtest.BinDir()
	if err != nil {
		return m, err
	}
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return m, fmt.Errorf("postgres --version: %w", err)
	}
	m.Postgres = strings.TrimSpace(string(out))
	return m, nil
}

func meminfoTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// write writes benchmarks.md and benchmarks.json into dir, each replaced
// whole or not at all.
func (r *report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	if err := r.markdown(&md, true); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "benchmarks.md"), []byte(md.String())); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "benchmarks.json"), append(js, '\n'))
}

// writeFile replaces path with data through a temporary file and a rename.
func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// columns of the results table.
var tableHeader = []string{
	"Workload", "Contender", "Mode", "Rows", "Offered rows/s", "Rows/s", "× native", "Time (s)", "First row (ms)",
	"Lag p50 (ms)", "Lag p99 (ms)", "Flat-out lag p99 (ms)", "CPU s / M rows", "Peak RSS (MiB)", "Wire B/row", "Load",
}

const dash = "—"

// tableRow renders one result as the cells of the table.
func (r *report) tableRow(res result) []string {
	wl := res.Workload
	for _, w := range r.Workloads {
		if w.ID == res.Workload {
			wl += " " + w.Title
		}
	}
	if res.Error != "" {
		row := []string{wl, label(res), "**failed**"}
		for len(row) < len(tableHeader) {
			row = append(row, dash)
		}
		return row
	}
	return []string{
		wl, label(res), res.Mode,
		commas(float64(res.Rows)),
		commas(res.OfferedRowsPerS),
		commas(res.RowsPerS),
		fixed(res.VsNative, 2),
		strconv.FormatFloat(res.Seconds, 'f', 2, 64),
		fixed(res.FirstRowMs, 0),
		fixed(res.LagP50Ms, 1),
		fixed(res.LagP99Ms, 1),
		fixed(res.FlatLagP99Ms, 1),
		fixed(res.CPUPerMRows, 1),
		rssCell(res.PeakRSS),
		fixed(res.WireBytesPerRow, 0),
		strconv.FormatFloat(res.LoadAvg, 'f', 1, 64),
	}
}

// markdown renders the report: a header with the machine, the table, the
// notes, and with method set, the method section of docs/benchmarks.md.
func (r *report) markdown(w io.Writer, method bool) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	if method {
		p("# Benchmarks\n\n")
		p("Generated by `%s`; run it again to refresh this file and `benchmarks.json` next to it, which holds every figure and is meant for comparing runs. ", r.Command)
		p("Do not edit by hand: the method below is part of the program (`bench/report.go`).\n\n")
	}
	kind := "full run"
	if r.Quick {
		kind = "quick run (tiny workloads, figures meaningless)"
	}
	p("- Run: %s, %s, took %s\n", r.Generated.Format("2006-01-02 15:04 MST"), kind, (time.Duration(r.RunSeconds * float64(time.Second))).Round(time.Second))
	p("- Machine: %d cores (%s), %.1f GiB memory, %s\n", r.Machine.Cores, r.Machine.CPU, float64(r.Machine.MemoryBytes)/(1<<30), r.Machine.Kernel)
	p("- Postgres: %s; Go: %s\n", r.Machine.Postgres, r.Machine.Go)
	if lo, hi, ok := r.loadRange(); ok {
		p("- Load average (1 min) as scenarios ended: %.1f to %.1f on %d cores (the Load column); other work on the machine slows whatever runs beside it\n",
			lo, hi, r.Machine.Cores)
	}
	p("- Command: `%s`\n\n", r.Command)
	r.writeGoals(p)

	p("| %s |\n", strings.Join(tableHeader, " | "))
	align := make([]string, len(tableHeader))
	for i := range align {
		align[i] = "---:"
		if i < 3 {
			align[i] = "---"
		}
	}
	p("|%s|\n", strings.Join(align, "|"))
	for _, res := range r.Results {
		p("| %s |\n", strings.Join(r.tableRow(res), " | "))
	}
	p("\n")
	r.notes(p)
	if method {
		r.method(p)
	}
	return bw.Flush()
}

// loadRange returns the lowest and highest load average of the scenarios
// that completed.
func (r *report) loadRange() (lo, hi float64, ok bool) {
	for _, res := range r.Results {
		if res.Error != "" || res.LoadAvg <= 0 {
			continue
		}
		if !ok || res.LoadAvg < lo {
			lo = res.LoadAvg
		}
		if !ok || res.LoadAvg > hi {
			hi = res.LoadAvg
		}
		ok = true
	}
	return lo, hi, ok
}

// paceWithCapture lists, per live workload, the pace the workload kept
// with capture beside it over the pace it kept with pg_recvlogical (decode)
// attached, such as "W1 1.02×"; "" when the run has no such pair.
func (r *report) paceWithCapture() string {
	var out []string
	for _, w := range r.Workloads {
		var capture, decode *result
		for i := range r.Results {
			res := &r.Results[i]
			if res.Workload != w.ID || res.Mode != "live" || res.Error != "" || res.OfferedRowsPerS <= 0 {
				continue
			}
			switch res.Contender {
			case "capture":
				capture = res
			case "decode":
				decode = res
			}
		}
		if capture != nil && decode != nil {
			out = append(out, fmt.Sprintf("%s %.2f×", w.ID, capture.OfferedRowsPerS/decode.OfferedRowsPerS))
		}
	}
	return strings.Join(out, ", ")
}

// vsOffline returns the catch-up of pgcourier's routes against
// native-offline's, per backlog workload: rows/s over rows/s.
func (r *report) vsOffline() string {
	var out []string
	for _, w := range r.Workloads {
		var parts []string
		for _, c := range []string{"rest", "postgres"} {
			if v, ok := r.rateOver(w.ID, c, "native-offline"); ok {
				parts = append(parts, fmt.Sprintf("%s %.2f×", c, v))
			}
		}
		if len(parts) > 0 {
			out = append(out, w.ID+" "+strings.Join(parts, ", "))
		}
	}
	return strings.Join(out, "; ")
}

// The pace at which each contender notices a link that came back: native's
// apply worker is started again every wal_retrieve_retry_interval (5 s by
// default), pgcourier's router probes at its default interval (±20 %). On
// average a link comes back half a cycle before it is noticed.
const (
	nativeRetryCycle = 5 * time.Second
	routerProbeCycle = router.DefaultProbeInterval
)

// drainsOf returns each draw's drain of contender on a backlog workload, in
// draw order: from the first row applied to the last, which the moment the
// link came up within the contender's retry cycle does not change.
func (r *report) drainsOf(workload, contender string) []float64 {
	var out []float64
	for _, res := range r.Results {
		if res.Workload == workload && res.Contender == contender && res.Mode == "backlog" && res.Error == "" && res.FirstRowMs != nil {
			out = append(out, res.Seconds-*res.FirstRowMs/1e3)
		}
	}
	return out
}

// drainSeconds returns, for one backlog workload, each contender's drain,
// the median of its draws.
func (r *report) drainSeconds(workload string) map[string]float64 {
	drain := map[string]float64{}
	for _, res := range r.Results {
		if _, done := drain[res.Contender]; !done && res.Workload == workload {
			if ds := r.drainsOf(workload, res.Contender); len(ds) > 0 {
				drain[res.Contender] = median(ds)
			}
		}
	}
	return drain
}

// median returns the middle of vs, or the mean of the two in the middle.
func median(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// label is res's contender, with its draw when the scenario ran more than
// once.
func label(res result) string {
	if res.Draw > 0 {
		return fmt.Sprintf("%s #%d", res.Contender, res.Draw)
	}
	return res.Contender
}

// order sorts the results by workload and contender, in the run's order,
// and draw.
func (r *report) order() {
	wi := func(id string) int {
		return slices.IndexFunc(r.Workloads, func(w workloadInfo) bool { return w.ID == id })
	}
	ci := func(n string) int {
		return slices.IndexFunc(r.Contenders, func(c contenderInfo) bool { return c.Name == n })
	}
	slices.SortStableFunc(r.Results, func(a, b result) int {
		return cmp.Or(cmp.Compare(wi(a.Workload), wi(b.Workload)), cmp.Compare(ci(a.Contender), ci(b.Contender)), cmp.Compare(a.Draw, b.Draw))
	})
}

// expectedVsOffline returns how many times faster than native-offline the
// route is expected to catch up on workload, for a link that comes back at
// a random moment: each waits half its cycle on average, then drains.
func (r *report) expectedVsOffline(workload, route string) (float64, bool) {
	drain := r.drainSeconds(workload)
	base, ok1 := drain["native-offline"]
	d, ok2 := drain[route]
	if !ok1 || !ok2 {
		return 0, false
	}
	return (nativeRetryCycle.Seconds()/2 + base) / (routerProbeCycle.Seconds()/2 + d), true
}

// drains returns, per backlog workload, each contender's drain and the
// catch-up expected for a link that comes back at a random moment: half
// the contender's cycle plus its drain. It compares pgcourier's routes
// with native-offline by that expectation.
func (r *report) drains() string {
	var out []string
	for _, w := range r.Workloads {
		drain := r.drainSeconds(w.ID)
		var parts []string
		for _, c := range []string{"native", "native-offline", "rest", "postgres"} {
			d, ok := drain[c]
			if !ok {
				continue
			}
			part := fmt.Sprintf("%s %.2f s", c, d)
			if ds := r.drainsOf(w.ID, c); len(ds) > 1 {
				var each []string
				for _, v := range ds {
					each = append(each, fmt.Sprintf("%.2f", v))
				}
				part += " (median of " + strings.Join(each, ", ") + ")"
			}
			parts = append(parts, part)
		}
		if len(parts) == 0 {
			continue
		}
		line := w.ID + " drain " + strings.Join(parts, ", ")
		if d, ok := drain["native-offline"]; ok {
			base := nativeRetryCycle.Seconds()/2 + d
			var vs []string
			for _, c := range []string{"rest", "postgres"} {
				if ratio, ok := r.expectedVsOffline(w.ID, c); ok {
					vs = append(vs, fmt.Sprintf("%s %.2f s, %.2f×", c, base/ratio, ratio))
				}
			}
			if len(vs) > 0 {
				line += fmt.Sprintf("; expected catch-up native-offline %.2f s, %s", base, strings.Join(vs, ", "))
			}
		}
		out = append(out, line)
	}
	return strings.Join(out, "; ")
}

// notes explains the run's particular figures below the table.
func (r *report) notes(p func(string, ...any)) {
	if r.Sizes.LagRowsPerS > 0 {
		p("- Lag: in W1, live mode, single-row inserts offered at %s rows/s for %gs by %d clients, before the timed stretch; ",
			commas(float64(r.Sizes.LagRowsPerS)), r.Sizes.LagSeconds, r.Sizes.Clients)
		for _, res := range r.Results {
			if res.LagOffered != nil {
				p("%s reached %s rows/s; ", res.Contender, commas(*res.LagOffered))
			}
		}
		p("other workloads have no lag column (they run flat out or as a backlog).\n")
	}
	var flat []string
	for _, res := range r.Results {
		if res.FlatLagP50Ms != nil && res.FlatLagP99Ms != nil {
			flat = append(flat, fmt.Sprintf("%s %s p50 %.1f ms, p99 %.1f ms", res.Workload, res.Contender, *res.FlatLagP50Ms, *res.FlatLagP99Ms))
		}
	}
	if len(flat) > 0 {
		p("- Flat-out lag: the lag of about %s rows sampled evenly across W1's timed stretch, committed as fast as the clients go (see Method): %s.\n",
			commas(flatLagSamples), strings.Join(flat, "; "))
	}
	var first []string
	for _, res := range r.Results {
		if res.FirstRowMs != nil {
			first = append(first, fmt.Sprintf("%s %s %s ms", res.Workload, label(res), commas(*res.FirstRowMs)))
		}
	}
	if len(first) > 0 {
		p("- First row: in backlog mode, from link up to the first row applied at the target: %s. ", strings.Join(first, "; "))
		p("pgcourier's router probes a route it could not reach every second (±20 %%), so its first row comes within about 1.2 s of link up plus one delivery.\n")
	}
	if vs := r.vsOffline(); vs != "" {
		p("- Catch-up against native-offline (the same link for both, each noticing it is back at its own default pace): "+
			"rows/s over native-offline's, same workload, same run: %s. Where native-offline's worker stood in its 5 s retry "+
			"cycle when the link came up decides much of its time, so these ratios swing from run to run.\n", vs)
	}
	if d := r.drains(); d != "" {
		p("- Drain and expected catch-up: a backlog contender's time is the wait until it notices the link is back plus its drain, "+
			"from the first row applied to the last. The drain does not depend on where the contender stood in its retry cycle when "+
			"the link came up; the wait does, and on average it is half the cycle: %.1f s for native-offline (its apply worker starts "+
			"again every %s), %.1f s for pgcourier's routes (the router probes every %s). The expected catch-up of a link that comes "+
			"back at a random moment is that average wait plus the drain; the ratio is native-offline's expected catch-up over the "+
			"route's. A contender that ran several draws (see Method) counts with its median drain: %s.\n",
			nativeRetryCycle.Seconds()/2, nativeRetryCycle, routerProbeCycle.Seconds()/2, routerProbeCycle, d)
	}
	if pace := r.paceWithCapture(); pace != "" {
		p("- The laptop's own pace with capture beside it: Offered rows/s of capture over that of decode (a bare pg_recvlogical "+
			"attached), in live mode, same workload, same run: %s.\n", pace)
	}
	p("- Peak RSS: only for contenders that run processes of their own (pg_recvlogical; pgcourier's capture, client and server); native and copy work inside Postgres backends.\n")
	p("- × native: rows/s over native's rows/s for the same workload in this run. Copy's rows are final row images (see Method), not changes.\n")
	for _, res := range r.Results {
		if res.SpillBytes > 0 {
			p("- %s %s: logical decoding spilled %.0f MiB to disk on the source (logical_decoding_work_mem is 64MB).\n",
				res.Workload, res.Contender, float64(res.SpillBytes)/(1<<20))
		}
	}
	for _, res := range r.Results {
		if res.Error != "" {
			p("- %s %s failed: %s\n", res.Workload, label(res), strings.ReplaceAll(res.Error, "\n", " "))
		}
	}
	p("\n")
}

// method writes the method section of docs/benchmarks.md.
func (r *report) method(p func(string, ...any)) {
	p("## Method\n\n")
	p("Every scenario — one workload against one contender — starts two fresh clusters from `internal/pgtest` ")
	p("(source and target, 127.0.0.1, `wal_level=logical`, `fsync=off`, `full_page_writes=off`, ")
	for _, k := range slices.Sorted(maps.Keys(r.Settings)) {
		p("`%s=%s`, ", k, r.Settings[k])
	}
	p("everything else default), creates the same edc-like tables on both — subject, consent, visit with about 300 bytes of jsonb ")
	p("form data, requisition, with the foreign keys and indexes a Django app would have — plus a marker table, and closes both ")
	p("clusters afterwards, also on failure or Ctrl-C. The target's tables carry one extra column, ")
	p("`applied_at timestamptz DEFAULT clock_timestamp()`, which native logical replication fills with its default as it applies a row, ")
	p("and so does pgcourier's applier: its batches carry the source's columns only. ")
	p("Scenarios run one after another (a -quick run overlaps three at a time, see `-parallel`).\n\n")

	p("### Workloads\n\n")
	for _, w := range r.Workloads {
		p("- **%s %s** (%s rows): %s\n", w.ID, w.Title, commas(float64(r.Sizes.RowsByWorkload[w.ID])), w.About)
	}
	p("\nClients: %d for W1, W3, W4, W5, W7, %d for W2 and W8 (%d-row transactions). ", r.Sizes.Clients, r.Sizes.Importers, r.Sizes.ImportTxRows)
	p("Each client is a connection of its own sending one transaction at a time; row values are computed by the source from the row's id.\n\n")

	p("### Contenders\n\n")
	for _, c := range r.Contenders {
		p("- **%s**: %s\n", c.Name, c.About)
	}
	p("\npgcourier's processes are the bench binary started again in a child mode (`bench/child.go`), built from the packages ")
	p("`pgcourier run` wires (`capture`, `router`, `router/rest`, `apply`), with the schema migrated on both clusters and the target ")
	p("registered as node `bench-server`. The link of both routes is a relay in the harness (`bench/relay.go`) between the client ")
	p("node and its receiver: while the link is down it accepts every connection and closes it at once, which the router sees as ")
	p("its receiver unreachable; once up it forwards every new connection. The relay is a real hop: each chunk costs the harness a ")
	p("read and a write, and the small delay of a local forward, which pgcourier pays and native does not (native's replication ")
	p("connection goes straight to the source).\n\n")

	p("### Modes\n\n")
	p("- **live**: the contender replicates while the workload runs flat out. Timed from the workload's first statement to the arrival ")
	p("of the last row; so a contender that keeps up shows the workload's own pace (\"Offered rows/s\"), and one that falls behind less.\n")
	p("- **backlog**: the slot or subscription exists with the link down while the workload runs; then the link comes up ")
	p("(`ALTER SUBSCRIPTION … ENABLE`, or for native-offline `ALTER ROLE … LOGIN`; pg_recvlogical or pgcourier's capture process starts, the relay of pgcourier's routes ")
	p("starts forwarding). Timed from link up to the arrival of the last row: the catch-up. W5 to W8 always run this way, and copy ")
	p("runs every workload this way. pgcourier's routes capture throughout, as a laptop does offline: the harness waits until ")
	p("the outbox holds the workload and its marker before the link comes up, so their catch-up is the shipping and applying of ")
	p("a full outbox; their Offered rows/s is the workload's pace with capture running beside it.\n\n")
	p("A backlog drains in a second or two, so one draw says as much about what else the machine did at that moment as about ")
	p("the contender. The catch-ups the targets compare — W7 and W8 against native-offline, rest and postgres — therefore run ")
	p("several times (`-draws`, 3 by default, 1 with -quick; the table numbers them #1, #2 …), the repeats after every other ")
	p("scenario, and compare by the median of their drains and of their rows/s.\n\n")

	p("### Measures\n\n")
	p("- **Last row arrived**: after the workload a marker row is committed on the source. Changes arrive in commit order, ")
	p("so once the marker is at the target, every insert, update and delete before it is too. Native, rest and postgres: the ")
	p("marker's `applied_at` on the target (polled every 5 ms, the time itself comes from the row). Decode: the moment the harness read the marker's commit ")
	p("from pg_recvlogical's output; the harness also checks that exactly the workload's row changes came before it. ")
	p("Capture: the `created_at` of the outbox row whose batch holds the marker's insert, which is `now()` of the outbox transaction: ")
	p("taken after the batch is encoded and before its two statements and commit, as native's `applied_at` is taken before the ")
	p("apply worker commits. The harness polls the outbox every 5 ms, decodes every new batch (`wire.Decode`), checks that ")
	p("exactly the workload's row changes came before the marker, and afterwards that the outbox holds nothing more. ")
	p("Copy: the end of the last COPY. After the timed window the harness compares every written table on the target with the ")
	p("source (row count and a hash of every row), so a fast wrong answer fails the scenario.\n")
	p("- **Time (s)** is the timed window (see Modes) and **Rows/s** = rows / time. **× native** divides by native's rows/s ")
	p("for the same workload in the same run. **Offered rows/s** is the workload's own pace, from its first statement to its ")
	p("last commit: with the contender replicating alongside in live mode, with the link down in backlog mode.\n")
	p("- **Lag p50/p99**: in W1's steady stretch, per row: `applied_at - created_at` for native (created_at is the source's ")
	p("`clock_timestamp()` at insert; both clusters read the same clock); for decode, the time the harness read the transaction's ")
	p("commit minus its commit timestamp (single-row transactions, so within microseconds of created_at); for capture, the ")
	p("`created_at` of the row's outbox batch minus the row's created_at as captured, which includes the time capture waits for ")
	p("more transactions before it closes a batch (`MaxBatchDelay`, 100 ms by default); for rest and postgres, ")
	p("`applied_at - created_at` on the target as for native, so capture's batch delay, the router, the link and the apply ")
	p("transaction all count. pg_recvlogical writes ")
	p("to a file the harness follows, looking again every 0.25 ms when it has read everything, which adds up to 0.25 ms; a pipe ")
	p("would wake the harness for every message and made pg_recvlogical two to three times slower here.\n")
	p("- **Flat-out lag p99**: the same lag, measured in W1's timed stretch, while the clients commit as fast as they can: on ")
	p("every n-th subject of the stretch, n chosen for about %s samples (every row at -quick sizes), read from the target after ", commas(flatLagSamples))
	p("the marker arrived (native, rest, postgres), from the outbox (capture, sampled alike), or from every transaction of the ")
	p("stream (decode). A contender that keeps up shows a lag near its steady one; one that falls behind shows the backlog it ")
	p("built by the end of the stretch. The notes give p50 too.\n")
	p("- **First row (ms)**: in backlog mode, from link up to the first row applied at the target: the earliest `applied_at` ")
	p("since link up in the workload's tables and the marker table. For native it is the apply worker starting after `ALTER SUBSCRIPTION … ENABLE`; for native-offline its next start after `ALTER ROLE … LOGIN` (up to 5 s) plus what native itself needs; ")
	p("for pgcourier's routes the router's next probe of the route it could not reach (every second, ±20 %%) and the first ")
	p("delivery: the \"delivery resumes within moments of the link coming back\" of the router's design.\n")
	p("- **CPU s / M rows**: user + system CPU (from `/proc/PID/stat`) during the timed window, per million rows, of the ")
	p("processes doing the work: native, the source's walsender and the target's apply worker; decode, the walsender and ")
	p("pg_recvlogical; copy, the two COPY backends; capture, the capture process, its walsender and the backends of its ")
	p("ordinary connections, which write the outbox (so the cost of making the outbox durable counts); rest and postgres, the ")
	p("client process (capture and router), the REST route's server process, the capture's walsender, the source backends of ")
	p("the capture's and the router's connections (the outbox written, read and acknowledged) and the target backends of the ")
	p("applier, found by application name when the link comes up and every 100 ms while the harness waits (the applier connects ")
	p("on demand). The relay's own work is the network's and is not counted. ")
	p("The workload's own connections and the harness are not counted. The kernel counts CPU in 10 ms ticks, ")
	p("so small runs give coarse figures. `benchmarks.json` splits the CPU by kind of process (`cpu_s_by_process`).\n")
	p("- **Peak RSS**: VmHWM of each of the contender's own processes. Native, native-offline and copy show — : their memory is Postgres's ")
	p("(shared buffers, `logical_decoding_work_mem`, which spills to disk beyond 64MB — the notes give the spill from ")
	p("`pg_stat_replication_slots`).\n")
	p("- **Wire B/row**: the TCP payload bytes, both ways, of the contender's connections between the nodes during the timed ")
	p("window, per row, read from the kernel's counters (sock_diag `tcp_info`: bytes acknowledged plus bytes received, at the ")
	p("server's end) so that nothing stands between the nodes. For native and decode that is the replication connection: the ")
	p("pgoutput stream with its CopyData/XLogData framing, keepalives and status updates; for copy the COPY connection to the ")
	p("target. For rest and postgres it is what the relay forwarded both ways: every HTTP request and answer of the REST route ")
	p("(headers, frames of compressed batches, JSON receipts, the progress probes once the link is up), or the whole Postgres ")
	p("protocol of the postgres route (connection start-up, the applier's statements with the rows as text parameters, results); ")
	p("the same quantity as the kernel's counters (`bench/relay_test.go` checks one against the other). Capture sends nothing ")
	p("between the nodes: its column holds the outbox payload bytes of the stretch (the zstd-compressed batches with their ")
	p("headers), what a route will carry. A counting relay was tried first for native and decode too and dropped: forwarding one ")
	p("small TCP segment per pgoutput message roughly halved decode's throughput.\n")
	p("- **Load**: the machine's 1-minute load average as the scenario ended. With %d cores, anything much above %d means other ", r.Machine.Cores, r.Machine.Cores)
	p("work competed for the CPU: that scenario's times are inflated, its CPU per row much less so.\n")
	p("- **Copy's rows** are the final row images of the workload's tables: for W3 the edited visits (each edited once, so as many ")
	p("rows as changes); for W4 and W7 the rows left after its inserts, updates and deletes (fewer rows than changes).\n\n")

	p("### Reading the figures\n\n")
	p("The machine is shared and noisy: compare ratios within one run rather than absolute figures across runs; ")
	p("`benchmarks.json` keeps every figure with the machine's facts for such comparisons. ")
	p("`go run ./bench -quick` runs everything at toy sizes in well under a minute, with no thresholds; `bench/bench_test.go` ")
	p("runs it that way so the harness keeps working. `-workloads` and `-contenders` select a subset.\n")
}

// commas formats v rounded to an integer with thousands separators.
func commas(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return dash
	}
	s := strconv.FormatInt(int64(math.Round(math.Abs(v))), 10)
	var b strings.Builder
	if v < 0 && s != "0" {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// fixed formats *v with prec decimals, or a dash when v is nil.
func fixed(v *float64, prec int) string {
	if v == nil {
		return dash
	}
	if prec == 0 {
		return commas(*v)
	}
	return strconv.FormatFloat(*v, 'f', prec, 64)
}

// rssCell renders the peak RSS of each process in MiB.
func rssCell(peak map[string]int64) string {
	if len(peak) == 0 {
		return dash
	}
	if len(peak) == 1 {
		for _, v := range peak {
			return strconv.FormatFloat(float64(v)/(1<<20), 'f', 1, 64)
		}
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(peak)) {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, float64(peak[k])/(1<<20)))
	}
	return strings.Join(parts, ", ")
}
