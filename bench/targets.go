package main

import (
	"fmt"
	"slices"
	"strings"
)

// The targets pgcourier's routes are held to, and the workloads that
// measure them.
const (
	// catchUpWorkload is the edc mix written while the link was down.
	catchUpWorkload = "W7"
	// restCatchUp and postgresCatchUp are how many times faster than
	// native-offline each route must be expected to catch up.
	restCatchUp     = 1.5
	postgresCatchUp = 2.0
	// flatLagMs bounds each route's flat-out lag p99 (only W1 has one).
	flatLagMs = 1000.0
	// wireRatio bounds the REST route's bytes per row over pgoutput's.
	wireRatio = 0.3
	// firstRowMs bounds the time from link up to the first row applied.
	firstRowMs = 2000.0
)

// drawWorkloads are the catch-ups run several times: the edc mix and the
// import, each written while the link was down.
var drawWorkloads = []string{catchUpWorkload, "W8"}

// firstRowWorkloads are the backlog workloads of ordinary transactions. In
// W6 the first row becomes visible only when its one transaction, shipped
// in parts, has arrived whole.
var firstRowWorkloads = []string{"W5", "W7", "W8"}

// goal is one target with this run's figure for it.
type goal struct {
	target string
	figure string
	met    bool
}

// goals returns the targets this run has the figures for.
func (r *report) goals() []goal {
	var out []goal
	for _, g := range []struct {
		route string
		least float64
	}{{"rest", restCatchUp}, {"postgres", postgresCatchUp}} {
		ratio, ok := r.expectedVsOffline(catchUpWorkload, g.route)
		if !ok {
			continue
		}
		fig := fmt.Sprintf("%.2f× expected", ratio)
		if n := len(r.drainsOf(catchUpWorkload, g.route)); n > 1 {
			fig += fmt.Sprintf(" from the median drains of %d draws", n)
		}
		if rate, ok := r.rateOver(catchUpWorkload, g.route, "native-offline"); ok {
			fig += fmt.Sprintf("; measured rows/s %.2f× native-offline's", rate)
		}
		out = append(out, goal{
			target: fmt.Sprintf("%s catch-up (%s) at least %.1f× native-offline's", g.route, catchUpWorkload, g.least),
			figure: fig, met: ratio >= g.least,
		})
	}
	for _, route := range []string{"rest", "postgres"} {
		for _, res := range r.Results {
			if res.Contender == route && res.Error == "" && res.FlatLagP99Ms != nil {
				out = append(out, goal{
					target: fmt.Sprintf("%s flat-out lag p99 (%s) under %s ms", route, res.Workload, commas(flatLagMs)),
					figure: fmt.Sprintf("%.0f ms", *res.FlatLagP99Ms), met: *res.FlatLagP99Ms < flatLagMs,
				})
			}
		}
	}
	if lo, hi, ok := r.wireRange("rest"); ok {
		out = append(out, goal{
			target: fmt.Sprintf("rest wire bytes per row at most %.1f× pgoutput's", wireRatio),
			figure: fmt.Sprintf("%.2f× to %.2f×", lo, hi), met: hi <= wireRatio,
		})
	}
	for _, route := range []string{"rest", "postgres"} {
		worst, ids := 0.0, []string(nil)
		for _, res := range r.Results {
			if res.Contender == route && res.Error == "" && res.FirstRowMs != nil && slices.Contains(firstRowWorkloads, res.Workload) {
				worst = max(worst, *res.FirstRowMs)
				if !slices.Contains(ids, res.Workload) {
					ids = append(ids, res.Workload)
				}
			}
		}
		if len(ids) > 0 {
			out = append(out, goal{
				target: fmt.Sprintf("%s first row within %s ms of link up (%s)", route, commas(firstRowMs), strings.Join(ids, ", ")),
				figure: fmt.Sprintf("at most %s ms", commas(worst)), met: worst <= firstRowMs,
			})
		}
	}
	return out
}

// catchUpDraw reports whether the scenario of workload and contender is
// one of the catch-ups the targets compare, run -draws times: a backlog
// drains in a second or two, so one draw says more about the machine's
// moment than about the contender.
func catchUpDraw(workload, contender string) bool {
	return slices.Contains(drawWorkloads, workload) && slices.Contains([]string{"native-offline", "rest", "postgres"}, contender)
}

// rateOver returns contender's rows/s over base's for a backlog workload,
// each the median of its draws.
func (r *report) rateOver(workload, contender, base string) (float64, bool) {
	rates := map[string][]float64{}
	for _, res := range r.Results {
		if res.Workload == workload && res.Mode == "backlog" && res.Error == "" && res.RowsPerS > 0 {
			rates[res.Contender] = append(rates[res.Contender], res.RowsPerS)
		}
	}
	if len(rates[base]) == 0 || len(rates[contender]) == 0 {
		return 0, false
	}
	return median(rates[contender]) / median(rates[base]), true
}

// wireRange returns the lowest and highest of route's wire bytes per row
// over native's (the pgoutput stream) across the run's workloads.
func (r *report) wireRange(route string) (lo, hi float64, ok bool) {
	for _, w := range r.Workloads {
		var native, own *float64
		for _, res := range r.Results {
			if res.Workload != w.ID || res.Error != "" {
				continue
			}
			switch res.Contender {
			case "native":
				native = res.WireBytesPerRow
			case route:
				own = res.WireBytesPerRow
			}
		}
		if native == nil || own == nil || *native <= 0 {
			continue
		}
		v := *own / *native
		if !ok || v < lo {
			lo = v
		}
		if !ok || v > hi {
			hi = v
		}
		ok = true
	}
	return lo, hi, ok
}

// writeGoals writes the targets section: each target, this run's figure,
// and whether it was met.
func (r *report) writeGoals(p func(string, ...any)) {
	gs := r.goals()
	if len(gs) == 0 {
		return
	}
	p("## Targets\n\n")
	for _, g := range gs {
		verdict := "met"
		if !g.met {
			verdict = "**missed**"
		}
		p("- %s: %s, %s\n", g.target, g.figure, verdict)
	}
	if lo, hi, ok := r.wireRange("postgres"); ok {
		p("- postgres wire bytes per row: %.2f× to %.2f× pgoutput's, not held to the REST route's target: the postgres route "+
			"is for good networks and speaks Postgres's own protocol, which has no compression, with the rows as text parameters.\n", lo, hi)
	}
	p("\nCatch-up is compared with native-offline, native logical replication behind the same down link, by the expected " +
		"catch-up of a link that comes back at a random moment (see the notes below the table). The table's × native column " +
		"compares with native enabled the very moment the link is up, which no replicator in the field can know.\n\n")
}
