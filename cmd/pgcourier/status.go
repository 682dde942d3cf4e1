package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcourier/pgcourier/apply"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/config"
)

// statusReport is what "pgcourier status" shows; its JSON form is stable.
type statusReport struct {
	Node     string              `json:"node"`
	Role     string              `json:"role"`
	Outbox   *outboxStatus       `json:"outbox,omitempty"`  // nodes that capture
	Sources  []apply.SourceState `json:"sources,omitempty"` // nodes that apply
	Problems []string            `json:"problems"`          // one line each: what is wrong
}

// outboxStatus is a capturing node's side of status.
type outboxStatus struct {
	PendingBatches    int     `json:"pending_batches"`
	PendingRows       int64   `json:"pending_rows"`
	PendingBytes      int64   `json:"pending_bytes"`
	OldestPendingAgeS float64 `json:"oldest_pending_age_s"`
	RelayedBatches    int     `json:"relayed_batches"`
	Slot              string  `json:"slot"`
	SlotActive        bool    `json:"slot_active"`
	CaptureLagBytes   int64   `json:"capture_lag_bytes"`
	RetainedWALBytes  int64   `json:"retained_wal_bytes"`
	// Snapshots are the initial copies of tables still under way.
	Snapshots []capture.SnapshotState `json:"snapshots"`
	Routes    []routeStatus           `json:"routes"`
}

type routeStatus struct {
	Route         string     `json:"route"`
	Target        string     `json:"target"`
	LastSuccessAt *time.Time `json:"last_success_at"`
	LastSeq       uint64     `json:"last_seq,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	LastErrorAt   *time.Time `json:"last_error_at,omitempty"`
}

// runStatus prints what is pending, stuck or failing on the node. It exits
// 1 when something needs attention.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	cfg, _, code := configFlags("status", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	})
	if cfg == nil {
		return code
	}
	rep, err := nodeStatus(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier status: %v\n", err)
		return exitFail
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "pgcourier status: %v\n", err)
			return exitFail
		}
	} else {
		printStatus(stdout, rep)
	}
	if len(rep.Problems) > 0 {
		return exitFail
	}
	return exitOK
}

// nodeStatus reads the node's status from its database.
func nodeStatus(ctx context.Context, cfg *config.Config) (*statusReport, error) {
	conn, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := checkSchema(ctx, conn, cfg); err != nil {
		return nil, err
	}
	rep := &statusReport{Node: cfg.Node, Role: string(cfg.Role), Problems: []string{}}
	if cfg.Capture != nil {
		if rep.Outbox, err = outboxReport(ctx, conn, cfg, rep); err != nil {
			return nil, err
		}
	}
	if cfg.Role.Applies() {
		if rep.Sources, err = apply.ListSources(ctx, conn); err != nil {
			return nil, err
		}
		for _, s := range rep.Sources {
			if b := s.Blocked; b != nil {
				msg := fmt.Sprintf("%s blocked at seq %d: %s", s.Source, b.Seq, b.Error)
				if b.Hint != "" {
					msg += " (" + b.Hint + ")"
				}
				rep.Problems = append(rep.Problems, msg)
			}
		}
	}
	return rep, nil
}

// staleAfter is how old an undelivered batch may get before status says
// so: a laptop offline for longer is normal, but worth a line.
const staleAfter = 24 * time.Hour

func outboxReport(ctx context.Context, conn *pgx.Conn, cfg *config.Config, rep *statusReport) (*outboxStatus, error) {
	ob := capture.OutboxOn(conn, cfg.Node)
	st, err := ob.Stats(ctx)
	if err != nil {
		return nil, err
	}
	states, err := ob.Routes(ctx)
	if err != nil {
		return nil, err
	}
	h, err := capture.Health(ctx, conn, cfg.Capture.Slot)
	if err != nil {
		return nil, err
	}
	snaps, err := capture.Snapshots(ctx, conn, cfg.Capture.Slot)
	if err != nil {
		return nil, err
	}
	out := &outboxStatus{
		PendingBatches:   st.Pending,
		PendingRows:      st.PendingRows,
		PendingBytes:     st.PendingBytes,
		RelayedBatches:   st.Relayed,
		Slot:             cfg.Capture.Slot,
		SlotActive:       h.Active,
		CaptureLagBytes:  h.LagBytes,
		RetainedWALBytes: h.RetainedBytes,
		Snapshots:        append([]capture.SnapshotState{}, snaps...),
		Routes:           []routeStatus{},
	}
	if !st.Oldest.IsZero() {
		out.OldestPendingAgeS = time.Since(st.Oldest).Seconds()
		if age := time.Since(st.Oldest); age > staleAfter {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%d batches wait to be sent, the oldest for %s", st.Pending, age.Round(time.Minute)))
		}
	}
	if !h.Exists {
		rep.Problems = append(rep.Problems, fmt.Sprintf("replication slot %s is missing: run \"pgcourier doctor -c %s\"", cfg.Capture.Slot, cfg.File()))
	} else if h.WALStatus == "lost" {
		rep.Problems = append(rep.Problems, fmt.Sprintf("replication slot %s lost WAL it needed: run \"pgcourier doctor -c %s\"", cfg.Capture.Slot, cfg.File()))
	}
	for i, rc := range cfg.Routes {
		name := routeName(i, rc)
		rs := routeStatus{Route: name, Target: redactURL(rc.URL)}
		if s, ok := states[name]; ok {
			if !s.LastSuccess.IsZero() {
				rs.LastSuccessAt = &s.LastSuccess
			}
			rs.LastSeq = s.LastSeq
			// An error older than the last success has healed.
			if s.LastError != "" && (s.LastSuccess.IsZero() || s.LastErrorAt.After(s.LastSuccess)) {
				rs.LastError, rs.LastErrorAt = s.LastError, &s.LastErrorAt
				if s.NeedsAction {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%s to %s: %s (fix the route in %s, or the upstream's [[listen.source]] for this node)",
						name, rs.Target, s.LastError, cfg.File()))
				}
			}
		}
		out.Routes = append(out.Routes, rs)
	}
	return out, nil
}

// printStatus writes rep for a person: what is wrong first, one line each.
func printStatus(w io.Writer, rep *statusReport) {
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
	fmt.Fprintf(w, "%s (%s)\n", rep.Node, rep.Role)
	if o := rep.Outbox; o != nil {
		age := "none waiting"
		if o.PendingBatches > 0 {
			age = "oldest " + (time.Duration(o.OldestPendingAgeS) * time.Second).String()
		}
		fmt.Fprintf(w, "  outbox: %d batches (%d rows) to send, %s", o.PendingBatches, o.PendingRows, age)
		if o.RelayedBatches > 0 {
			fmt.Fprintf(w, "; %d of them with a relay", o.RelayedBatches)
		}
		fmt.Fprintln(w)
		active := "idle"
		if o.SlotActive {
			active = "streaming"
		}
		fmt.Fprintf(w, "  capture: slot %s %s, %d bytes behind, %d bytes of WAL kept\n", o.Slot, active, o.CaptureLagBytes, o.RetainedWALBytes)
		for _, sn := range o.Snapshots {
			of := ""
			if sn.RowsEstimate > 0 {
				of = " of about " + thousands(sn.RowsEstimate)
			}
			fmt.Fprintf(w, "  snapshot of %s: %s%s rows copied so far\n", sn.Table, thousands(sn.RowsDone), of)
		}
		for _, r := range o.Routes {
			last := "never delivered"
			if r.LastSuccessAt != nil {
				last = fmt.Sprintf("last delivered seq %d at %s", r.LastSeq, r.LastSuccessAt.Local().Format(time.DateTime))
			}
			fmt.Fprintf(w, "  %s %s: %s\n", r.Route, r.Target, last)
			if r.LastError != "" {
				fmt.Fprintf(w, "    last error at %s: %s\n", r.LastErrorAt.Local().Format(time.DateTime), r.LastError)
			}
		}
	}
	for _, s := range rep.Sources {
		fmt.Fprintf(w, "  source %s: applied seq %d (epoch %d) at %s, %d rows, %d open conflicts\n",
			s.Source, s.AppliedSeq, s.Epoch, s.LastAppliedAt.Local().Format(time.DateTime), s.Rows, s.Conflicts)
		if st := s.Staged; st != nil {
			fmt.Fprintf(w, "    receiving a large transaction: %s staged (%s rows) since %s, applied with the batch that ends it\n",
				plural(st.Parts, "part", "parts"), thousands(st.Rows), st.Since.Local().Format(time.DateTime))
		}
		if s.Abandoned > 0 {
			fmt.Fprintf(w, "    %s from replaced epochs, never applied (the new epoch's snapshot carries their rows); "+
				"to remove them: DELETE FROM pgcourier.staged WHERE source = '%s' AND epoch <> %d\n",
				plural(s.Abandoned, "staged part", "staged parts"), s.Source, s.Epoch)
		}
		if b := s.Blocked; b != nil {
			fmt.Fprintf(w, "    blocked at seq %d since %s (%d attempts): %s\n", b.Seq, b.Since.Local().Format(time.DateTime), b.Attempts, b.Error)
		}
	}
	if rep.Outbox == nil && len(rep.Sources) == 0 {
		fmt.Fprintln(w, "  nothing captured or applied yet")
	}
}
