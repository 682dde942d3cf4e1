package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain runs a contender's child process (capture, a client node, a
// listener) when the harness started this test binary as one
// (os.Executable is the test binary here).
func TestMain(m *testing.M) {
	if code, ok := runChild(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestQuick runs the whole harness in -quick mode against real clusters,
// every workload and every contender, so that it keeps working between
// full runs.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 72 Postgres clusters")
	}
	if os.Getenv("PGCOURIER_TEST_DATABASES") != "" {
		t.Skip("the benchmark needs local clusters; PGCOURIER_TEST_DATABASES is set")
	}
	dir := t.TempDir()
	opts, err := parseFlags([]string{"-quick", "-out", dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var stdout bytes.Buffer
	start := time.Now()
	if err := run(ctx, opts, &stdout, testWriter{t}); err != nil {
		t.Fatalf("run: %v\nstdout:\n%s", err, stdout.String())
	}
	t.Logf("quick run took %v", time.Since(start).Round(time.Second))

	b, err := os.ReadFile(filepath.Join(dir, "benchmarks.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("benchmarks.json: %v", err)
	}
	if !rep.Quick || rep.Machine.Cores <= 0 || rep.Machine.Postgres == "" {
		t.Errorf("benchmarks.json: quick %v, machine %+v; want a quick run with the machine's facts", rep.Quick, rep.Machine)
	}
	md, err := os.ReadFile(filepath.Join(dir, "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	header := "| " + strings.Join(tableHeader, " | ") + " |"
	for name, doc := range map[string]string{"stdout": stdout.String(), "benchmarks.md": string(md)} {
		if !strings.Contains(doc, header) {
			t.Errorf("%s has no results table:\n%s", name, doc)
		}
	}
	if !strings.Contains(string(md), "## Method") {
		t.Error("benchmarks.md has no method section")
	}

	for _, w := range workloads {
		for _, c := range []string{"native", "decode", "capture", "copy", "rest", "postgres"} {
			res, ok := find(rep.Results, w.id, c)
			if !ok {
				t.Errorf("no result for %s %s", w.id, c)
				continue
			}
			if res.Error != "" || res.Rows <= 0 || res.RowsPerS <= 0 || res.VsNative == nil {
				t.Errorf("%s %s: error %q, %d rows, %.0f rows/s, vs native %v; want positive figures",
					w.id, c, res.Error, res.Rows, res.RowsPerS, res.VsNative)
			}
			if res.Changes <= 0 || res.WireBytesPerRow == nil || *res.WireBytesPerRow <= 0 {
				t.Errorf("%s %s: %d changes, wire bytes per row %v; want both positive", w.id, c, res.Changes, res.WireBytesPerRow)
			}
			wantMode := "live"
			if w.backlog || c == "copy" {
				wantMode = "backlog"
			}
			if res.Mode != wantMode {
				t.Errorf("%s %s: mode %s, want %s", w.id, c, res.Mode, wantMode)
			}
			wantLag := w.lagStretch && c != "copy"
			if gotLag := res.LagP50Ms != nil && res.LagP99Ms != nil; gotLag != wantLag {
				t.Errorf("%s %s: lag p50 %v p99 %v, want lag figures: %v", w.id, c, res.LagP50Ms, res.LagP99Ms, wantLag)
			}
			if gotLag := res.FlatLagP50Ms != nil && res.FlatLagP99Ms != nil; gotLag != wantLag {
				t.Errorf("%s %s: flat-out lag p50 %v p99 %v, want lag figures: %v", w.id, c, res.FlatLagP50Ms, res.FlatLagP99Ms, wantLag)
			}
			applies := c == "native" || c == "rest" || c == "postgres"
			if wantFirst := w.backlog && applies; (res.FirstRowMs != nil) != wantFirst {
				t.Errorf("%s %s: first row %v, want a figure: %v", w.id, c, res.FirstRowMs, wantFirst)
			} else if wantFirst && *res.FirstRowMs <= 0 {
				t.Errorf("%s %s: first row %.1f ms after link up, want a positive time", w.id, c, *res.FirstRowMs)
			}
			if wantRSS := c != "native" && c != "copy"; (len(res.PeakRSS) > 0) != wantRSS {
				t.Errorf("%s %s: peak RSS %v, want figures: %v", w.id, c, res.PeakRSS, wantRSS)
			}
			if c == "capture" {
				if res.PeakRSS["pgcourier capture"] <= 0 {
					t.Errorf("%s capture: peak RSS %v, want the capture process's", w.id, res.PeakRSS)
				}
				for _, p := range []string{"pgcourier capture", "walsender", "backend"} {
					if _, ok := res.CPUSecondsBy[p]; !ok {
						t.Errorf("%s capture: CPU by process %v, want a figure for %s", w.id, res.CPUSecondsBy, p)
					}
				}
			}
			if c == "rest" || c == "postgres" {
				procs := []string{"pgcourier client", "walsender", "backend", "apply backend"}
				if c == "rest" {
					procs = append(procs, "pgcourier server")
				}
				for _, p := range procs {
					if _, ok := res.CPUSecondsBy[p]; !ok {
						t.Errorf("%s %s: CPU by process %v, want a figure for %s", w.id, c, res.CPUSecondsBy, p)
					}
					if p == "pgcourier client" || p == "pgcourier server" {
						if res.PeakRSS[p] <= 0 {
							t.Errorf("%s %s: peak RSS %v, want a figure for %s", w.id, c, res.PeakRSS, p)
						}
					}
				}
			}
			if c != "copy" && res.Rows != res.Changes {
				t.Errorf("%s %s: %d rows carried, %d changes committed", w.id, c, res.Rows, res.Changes)
			}
		}
	}
}

func find(results []result, workload, contender string) (result, bool) {
	for _, r := range results {
		if r.Workload == workload && r.Contender == contender {
			return r, true
		}
	}
	return result{}, false
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args                 []string
		out                  string
		parallel             int
		workloads, contender string
	}{
		{nil, "docs", 1, "W1,W2,W3,W4,W5,W6,W7,W8", "native,native-offline,decode,capture,copy,rest,postgres"},
		{[]string{"-quick"}, "", 3, "W1,W2,W3,W4,W5,W6,W7,W8", "native,native-offline,decode,capture,copy,rest,postgres"},
		{[]string{"-quick", "-out", "x", "-parallel", "1"}, "x", 1, "W1,W2,W3,W4,W5,W6,W7,W8", "native,native-offline,decode,capture,copy,rest,postgres"},
		{[]string{"-workloads", "w3, W1", "-contenders", "copy,native"}, "docs", 1, "W1,W3", "native,copy"},
	} {
		o, err := parseFlags(tc.args)
		if err != nil {
			t.Errorf("parseFlags(%q): %v", tc.args, err)
			continue
		}
		got := []any{o.out, o.parallel, strings.Join(o.workloads, ","), strings.Join(o.contenders, ",")}
		want := []any{tc.out, tc.parallel, tc.workloads, tc.contender}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("parseFlags(%q) = %v, want %v", tc.args, got, want)
				break
			}
		}
	}
	for _, args := range [][]string{{"-workloads", "W9"}, {"-contenders", "rsync"}, {"-parallel", "0"}, {"extra"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) succeeded, want an error", args)
		}
	}
}
