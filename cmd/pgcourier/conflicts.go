package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/pgcourier/pgcourier/apply"
)

// runConflicts lists the changes this node's applier did not apply and
// kept for review.
func runConflicts(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON, all bool
	var limit int
	cfg, _, code := configFlags("conflicts", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON, one array of conflicts")
		fs.BoolVar(&all, "all", false, "include resolved conflicts")
		fs.IntVar(&limit, "limit", 100, "show at most the `N` most recent (0: all)")
	})
	if cfg == nil {
		return code
	}
	conn, err := connect(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier conflicts: %v\n", err)
		return exitFail
	}
	defer conn.Close(context.WithoutCancel(ctx))
	cs, err := apply.ListConflicts(ctx, conn, all, limit)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier conflicts: %v (has pgcourier init -c %s run here?)\n", err, cfg.File())
		return exitFail
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if cs == nil {
			cs = []apply.Conflict{}
		}
		if err := enc.Encode(cs); err != nil {
			fmt.Fprintf(stderr, "pgcourier conflicts: %v\n", err)
			return exitFail
		}
		return exitOK
	}
	if len(cs) == 0 {
		what := "open conflicts"
		if all {
			what = "conflicts"
		}
		fmt.Fprintf(stdout, "%s: no %s\n", cfg.Node, what)
		return exitOK
	}
	for _, c := range cs {
		printConflict(stdout, c)
	}
	return exitOK
}

func printConflict(w io.Writer, c apply.Conflict) {
	const stamp = "2006-01-02 15:04:05 MST"
	state := "open"
	if c.ResolvedAt != nil {
		state = "resolved " + c.ResolvedAt.Local().Format(stamp)
		if c.Resolution != "" {
			state += ": " + c.Resolution
		}
	}
	table := c.Table
	if table == "" {
		table = "(whole batch)"
	}
	fmt.Fprintf(w, "#%d  %s  %s seq %d  %s %s  %s  [%s]\n",
		c.ID, c.RecordedAt.Local().Format(stamp), c.Source, c.Seq, c.Op, table, c.Rule, state)
	if c.Detail != "" {
		fmt.Fprintf(w, "    %s\n", c.Detail)
	}
	if len(c.Incoming) > 0 {
		fmt.Fprintf(w, "    incoming: %s%s\n", c.Incoming, when(c.CommitTime))
	}
	if len(c.Stored) > 0 {
		by := ""
		if c.StoredSource != "" {
			by = " by " + c.StoredSource
		}
		fmt.Fprintf(w, "    stored:   %s%s%s\n", c.Stored, by, when(c.StoredCommitTime))
	}
}

// when formats an optional commit time as " at …".
func when(t *time.Time) string {
	if t == nil {
		return ""
	}
	return " at " + t.Local().Format("2006-01-02 15:04:05.000 MST")
}
