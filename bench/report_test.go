package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// sampleReport is a small report with a figure of every kind: a live
// replicator with lag, a process contender with peak RSS, a copy, a spill
// and a failure.
func sampleReport() *report {
	r := &report{
		Generated: time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC),
		Command:   "go run ./bench -workloads W1,W6",
		Machine:   machine{Cores: 2, MemoryBytes: 24 << 30, CPU: "Test CPU", Kernel: "Linux 6.1", Postgres: "postgres (PostgreSQL) 15.8", Go: "go1.26.0"},
		Settings:  map[string]string{"shared_buffers": "256MB"},
		Workloads: []workloadInfo{
			{ID: "W1", Title: "single-row inserts", About: "inserts."},
			{ID: "W6", Title: "one huge transaction", About: "one.", Backlog: true},
		},
		Contenders: []contenderInfo{{Name: "native", About: "the baseline."}, {Name: "decode", About: "the ceiling."}},
		Results: []result{
			{
				Workload: "W1", Contender: "native", Mode: "live", Rows: 60000, Changes: 60000,
				OfferedRowsPerS: 9012.4, Seconds: 7.0625, RowsPerS: 8495.6,
				LagOffered: ptr(999.8), LagP50Ms: ptr(1.23), LagP99Ms: ptr(3.45), FlatLagP50Ms: ptr(10.0), FlatLagP99Ms: ptr(25.04),
				CPUSeconds: 0.75, CPUPerMRows: ptr(12.5), WireBytes: 16020000, WireBytesPerRow: ptr(267.0), LoadAvg: 1.25,
			},
			{
				Workload: "W1", Contender: "decode", Mode: "live", Rows: 60000, Changes: 60000,
				OfferedRowsPerS: 9500, Seconds: 6.5, RowsPerS: 9230.8,
				LagOffered: ptr(1000.1), LagP50Ms: ptr(0.5), LagP99Ms: ptr(1.5),
				CPUSeconds: 0.6, CPUPerMRows: ptr(10.0), PeakRSS: map[string]int64{"pg_recvlogical": 8 << 20},
				WireBytes: 15660000, WireBytesPerRow: ptr(261.0), LoadAvg: 2.5,
			},
			{
				Workload: "W6", Contender: "native", Mode: "backlog", Rows: 2000000, Changes: 2000000,
				OfferedRowsPerS: 250000, Seconds: 20, RowsPerS: 100000, FirstRowMs: ptr(35.2),
				CPUSeconds: 30, CPUPerMRows: ptr(15.0), WireBytes: 306000000, WireBytesPerRow: ptr(153.0),
				SpillBytes: 300 << 20, LoadAvg: 3,
			},
			{Workload: "W6", Contender: "decode", Mode: "backlog", Error: "decode: wait for marker 1: context deadline exceeded"},
		},
	}
	r.finish(fullSizes, 6*time.Minute+12*time.Second)
	return r
}

func TestMarkdown(t *testing.T) {
	r := sampleReport()
	var b strings.Builder
	if err := r.markdown(&b, true); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"# Benchmarks\n",
		"- Machine: 2 cores (Test CPU), 24.0 GiB memory, Linux 6.1\n",
		"- Postgres: postgres (PostgreSQL) 15.8; Go: go1.26.0\n",
		"- Command: `go run ./bench -workloads W1,W6`\n",
		"took 6m12s",
		"| W1 single-row inserts | native | live | 60,000 | 9,012 | 8,496 | 1.00 | 7.06 | — | 1.2 | 3.5 | 25.0 | 12.5 | — | 267 | 1.2 |\n",
		"| W1 single-row inserts | decode | live | 60,000 | 9,500 | 9,231 | 1.09 | 6.50 | — | 0.5 | 1.5 | — | 10.0 | 8.0 | 261 | 2.5 |\n",
		"| W6 one huge transaction | native | backlog | 2,000,000 | 250,000 | 100,000 | 1.00 | 20.00 | 35 | — | — | — | 15.0 | — | 153 | 3.0 |\n",
		"- Flat-out lag: the lag of about 10,000 rows sampled evenly across W1's timed stretch, committed as fast as the clients go (see Method): W1 native p50 10.0 ms, p99 25.0 ms.\n",
		"- First row: in backlog mode, from link up to the first row applied at the target: W6 native 35 ms. ",
		"- Load average (1 min) as scenarios ended: 1.2 to 3.0 on 2 cores",
		"| W6 one huge transaction | decode | **failed** | — |",
		"- W6 native: logical decoding spilled 300 MiB to disk",
		"- W6 decode failed: decode: wait for marker 1: context deadline exceeded\n",
		"native reached 1,000 rows/s; decode reached 1,000 rows/s;",
		"## Method\n",
		"`shared_buffers=256MB`",
		"- **W6 one huge transaction** (2,000,000 rows): one.\n",
		"- **decode**: the ceiling.\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q; got:\n%s", want, md)
		}
	}

	// Every table line has as many cells as the header.
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "|") {
			if got := strings.Count(line, "|") - 1; got != len(tableHeader) {
				t.Errorf("table line has %d cells, want %d: %s", got, len(tableHeader), line)
			}
		}
	}

	// Without the method, the same table and notes, as printed on stdout.
	var short strings.Builder
	if err := r.markdown(&short, false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(short.String(), "## Method") || strings.Contains(short.String(), "# Benchmarks") {
		t.Errorf("markdown without method has the method or the title:\n%s", short.String())
	}
	if !strings.HasSuffix(md, "\n") || !strings.Contains(md, short.String()[:200]) {
		t.Error("the stdout table differs from the one in the file")
	}
}

func TestWrite(t *testing.T) {
	r := sampleReport()
	dir := filepath.Join(t.TempDir(), "docs")
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "benchmarks.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got report
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, &got); diff != "" {
		t.Errorf("benchmarks.json does not round-trip (-wrote +read):\n%s", diff)
	}
	for _, want := range []string{`"vs_native": null`, `"lag_p99_ms": 3.45`, `"pg_recvlogical": 8388608`, `"W6": 2000000`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("benchmarks.json lacks %s", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "benchmarks.md")); err != nil {
		t.Error(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("%s holds %d files, want 2 (no temporary files left)", dir, len(entries))
	}
}

func TestRatios(t *testing.T) {
	r := sampleReport()
	for _, tc := range []struct {
		workload, contender string
		want                *float64
	}{
		{"W1", "native", ptr(1.0)},
		{"W1", "decode", ptr(9230.8 / 8495.6)},
		{"W6", "native", ptr(1.0)},
		{"W6", "decode", nil},
	} {
		res, _ := find(r.Results, tc.workload, tc.contender)
		if diff := cmp.Diff(tc.want, res.VsNative, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
			t.Errorf("%s %s: vs native (-want +got):\n%s", tc.workload, tc.contender, diff)
		}
	}
}

func TestCommas(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{
		{0, "0"}, {0.4, "0"}, {999, "999"}, {999.5, "1,000"}, {1000, "1,000"},
		{1234567.6, "1,234,568"}, {-1500, "-1,500"}, {123456, "123,456"},
	} {
		if got := commas(tc.in); got != tc.want {
			t.Errorf("commas(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRSSCell(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]int64
		want string
	}{
		{nil, "—"},
		{map[string]int64{"pg_recvlogical": 8 << 20}, "8.0"},
		{map[string]int64{"server": 30 << 20, "capture": 12 << 19}, "capture 6.0, server 30.0"},
	} {
		if got := rssCell(tc.in); got != tc.want {
			t.Errorf("rssCell(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPaceWithCapture(t *testing.T) {
	r := sampleReport()
	if got := r.paceWithCapture(); got != "" {
		t.Errorf("paceWithCapture without capture = %q, want \"\"", got)
	}
	r.Results = append(r.Results, result{Workload: "W1", Contender: "capture", Mode: "live", OfferedRowsPerS: 9025})
	if got, want := r.paceWithCapture(), "W1 0.95×"; got != want {
		t.Errorf("paceWithCapture = %q, want %q", got, want)
	}
	var b strings.Builder
	if err := r.markdown(&b, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "same workload, same run: W1 0.95×.") {
		t.Errorf("markdown lacks the pace note:\n%s", b.String())
	}
}

func TestDrains(t *testing.T) {
	r := sampleReport()
	// W6 native alone: a drain, nothing to compare.
	if got, want := r.drains(), "W6 drain native 19.96 s"; got != want {
		t.Errorf("drains = %q, want %q", got, want)
	}
	r.Results = append(r.Results,
		result{Workload: "W6", Contender: "native-offline", Mode: "backlog", Seconds: 4.5, FirstRowMs: ptr(3500.0)},
		result{Workload: "W6", Contender: "postgres", Mode: "backlog", Seconds: 2, FirstRowMs: ptr(500.0)},
		result{Workload: "W6", Contender: "rest", Mode: "backlog", Error: "rest: link down"},
	)
	// native-offline: 2.5 s + 1 s; postgres: 0.5 s + 1.5 s.
	want := "W6 drain native 19.96 s, native-offline 1.00 s, postgres 1.50 s; expected catch-up native-offline 3.50 s, postgres 2.00 s, 1.75×"
	if got := r.drains(); got != want {
		t.Errorf("drains = %q, want %q", got, want)
	}
	var b strings.Builder
	if err := r.markdown(&b, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "counts with its median drain: "+want+".") {
		t.Errorf("markdown lacks the drain note:\n%s", b.String())
	}
}

func TestGoals(t *testing.T) {
	r := sampleReport()
	if got := r.goals(); len(got) != 0 {
		t.Errorf("goals without pgcourier's routes = %v, want none", got)
	}
	r.Workloads = append(r.Workloads, workloadInfo{ID: "W7", Title: "edc mix backlog", Backlog: true})
	r.Results = append(r.Results,
		// native-offline: 2.5 s + 2 s; rest: 0.5 s + 1.5 s, 2.25×; postgres: 0.5 s + 2 s, 1.8×.
		result{Workload: "W7", Contender: "native", Mode: "backlog", Seconds: 2, RowsPerS: 50, FirstRowMs: ptr(10.0), WireBytesPerRow: ptr(300.0)},
		result{Workload: "W7", Contender: "native-offline", Mode: "backlog", Seconds: 5, RowsPerS: 20, FirstRowMs: ptr(3000.0)},
		result{Workload: "W7", Contender: "rest", Mode: "backlog", Seconds: 2.5, RowsPerS: 40, FirstRowMs: ptr(1000.0), WireBytesPerRow: ptr(60.0)},
		result{Workload: "W7", Contender: "postgres", Mode: "backlog", Seconds: 4.5, RowsPerS: 22, FirstRowMs: ptr(2500.0), WireBytesPerRow: ptr(240.0)},
		result{Workload: "W1", Contender: "rest", Mode: "live", FlatLagP99Ms: ptr(999.0), WireBytesPerRow: ptr(26.7)},
		result{Workload: "W1", Contender: "postgres", Mode: "live", Error: "postgres: link down"},
	)
	var b strings.Builder
	if err := r.markdown(&b, false); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"## Targets\n\n",
		"- rest catch-up (W7) at least 1.5× native-offline's: 2.25× expected; measured rows/s 2.00× native-offline's, met\n",
		"- postgres catch-up (W7) at least 2.0× native-offline's: 1.80× expected; measured rows/s 1.10× native-offline's, **missed**\n",
		"- rest flat-out lag p99 (W1) under 1,000 ms: 999 ms, met\n",
		"- rest wire bytes per row at most 0.3× pgoutput's: 0.10× to 0.20×, met\n",
		"- rest first row within 2,000 ms of link up (W7): at most 1,000 ms, met\n",
		"- postgres first row within 2,000 ms of link up (W7): at most 2,500 ms, **missed**\n",
		"- postgres wire bytes per row: 0.80× to 0.80× pgoutput's, not held",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q; got:\n%s", want, md)
		}
	}
	if strings.Contains(md, "postgres flat-out lag") {
		t.Errorf("a failed scenario has a lag target line:\n%s", md)
	}
	if i, j := strings.Index(md, "## Targets"), strings.Index(md, "| Workload |"); i < 0 || j < i {
		t.Errorf("the targets do not come before the table:\n%s", md)
	}
}

// TestDraws has the catch-up scenarios of W7 run three times: the table
// numbers the draws, and the drains and the targets go by their medians.
func TestDraws(t *testing.T) {
	r := sampleReport()
	r.Workloads = append(r.Workloads, workloadInfo{ID: "W7", Title: "edc mix backlog", Backlog: true})
	r.Contenders = append(r.Contenders, contenderInfo{Name: "native-offline"}, contenderInfo{Name: "postgres"})
	backlog := func(c string, draw int, seconds, firstMs, rate float64) result {
		return result{Workload: "W7", Contender: c, Draw: draw, Mode: "backlog", Seconds: seconds, FirstRowMs: ptr(firstMs), RowsPerS: rate}
	}
	// Drains: native-offline 1.0, 3.0, 1.2 s (median 1.2); postgres 1.1, 0.9, 1.0 s (median 1.0).
	r.Results = append(r.Results,
		backlog("postgres", 3, 1.5, 500, 40),
		backlog("native-offline", 1, 3.5, 2500, 20),
		backlog("postgres", 1, 2.1, 1000, 30),
		backlog("native-offline", 2, 4, 1000, 25),
		backlog("native-offline", 3, 5.2, 4000, 10),
		backlog("postgres", 2, 1.1, 200, 50),
	)
	r.order()
	var got []string
	for _, res := range r.Results[len(r.Results)-6:] {
		got = append(got, label(res))
	}
	want := []string{"native-offline #1", "native-offline #2", "native-offline #3", "postgres #1", "postgres #2", "postgres #3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results in order (-want +got):\n%s", diff)
	}
	// (2.5 + 1.2) / (0.5 + 1.0)
	if ratio, ok := r.expectedVsOffline("W7", "postgres"); !ok || fmt.Sprintf("%.3f", ratio) != "2.467" {
		t.Errorf("expectedVsOffline = %v, %v; want 2.467 from the median drains", ratio, ok)
	}
	var b strings.Builder
	if err := r.markdown(&b, false); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"W7 drain native-offline 1.20 s (median of 1.00, 3.00, 1.20), postgres 1.00 s (median of 1.10, 0.90, 1.00)",
		"- postgres catch-up (W7) at least 2.0× native-offline's: 2.47× expected from the median drains of 3 draws; measured rows/s 2.00× native-offline's, met\n",
		"| W7 edc mix backlog | postgres #2 | backlog |",
		"W7 postgres #2 200 ms",
		"- postgres first row within 2,000 ms of link up (W7): at most 1,000 ms, met\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q; got:\n%s", want, md)
		}
	}
}
