package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/apply"
	"github.com/pgcourier/pgcourier/wire"
)

// runPark moves the batch a source is blocked on into pgcourier.conflicts,
// whole, so that the source's later batches can apply.
func runPark(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var source, reason string
	var seq uint64
	var force bool
	cfg, _, code := configFlags("park", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&force, "force", false, "park even when this node kept no readable copy of the batch (its changes are then not kept here)")
		fs.StringVar(&source, "source", "", "the `ID` of the blocked source (required)")
		fs.Uint64Var(&seq, "seq", 0, "the blocked batch's `SEQ`, as status shows it: a check that the right batch is parked")
		fs.StringVar(&reason, "reason", "parked by an operator", "why, kept with the parked changes")
	})
	if cfg == nil {
		return code
	}
	if err := pgcourier.CheckNodeID(source); err != nil {
		fmt.Fprintf(stderr, "pgcourier park: --source: %v\n", err)
		return exitUsage
	}
	if !cfg.Role.Applies() {
		fmt.Fprintf(stderr, "pgcourier park: a %s applies no batches; run park on the node that applies them\n", cfg.Role)
		return exitUsage
	}
	conn, err := connect(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier park: %v\n", err)
		return exitFail
	}
	defer conn.Close(context.WithoutCancel(ctx))
	stuck, payload, ok, err := apply.BlockedBatch(ctx, conn, source)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier park: %v\n", err)
		return exitFail
	}
	if !ok {
		fmt.Fprintf(stderr, "pgcourier park: %s is not blocked here; nothing to park\n", source)
		return exitFail
	}
	if seq != 0 && seq != stuck.Seq {
		fmt.Fprintf(stderr, "pgcourier park: %s is blocked at seq %d, not %d; nothing parked\n", source, stuck.Seq, seq)
		return exitFail
	}
	var batch *pgcourier.Batch
	why := "this node kept no copy of it"
	if payload != nil {
		if batch, err = wire.Decode(payload); err != nil {
			why, batch = fmt.Sprintf("the copy this node kept does not decode (%v)", err), nil
		}
	}
	if batch == nil && !force {
		fmt.Fprintf(stderr, "pgcourier park: %s seq %d: %s, so parking it would keep none of its changes here; "+
			"%s still holds the batch in its outbox until it is acknowledged: fix the cause instead, or pass --force to park it without its changes\n",
			source, stuck.Seq, why, source)
		return exitFail
	}
	if batch == nil {
		fmt.Fprintf(stderr, "pgcourier park: %s seq %d: %s; parking it without its changes (--force)\n", source, stuck.Seq, why)
	}
	dsn, err := cfg.Database.ConnString()
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier park: %v\n", err)
		return exitFail
	}
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier park: database url: %v\n", err)
		return exitFail
	}
	w, err := apply.New(pc, apply.Options{Node: cfg.Node, Policy: apply.Policy(cfg.Apply.Conflict)})
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier park: %v\n", err)
		return exitFail
	}
	defer w.Close()
	if err := w.Park(ctx, source, stuck.Epoch, stuck.Seq, batch, reason); err != nil {
		fmt.Fprintf(stderr, "pgcourier park: %v\n", err)
		return exitFail
	}
	rows := 0
	if batch != nil {
		rows = batch.Rows()
	}
	fmt.Fprintf(stdout, "%s: parked %s seq %d (%d row changes kept in pgcourier.conflicts, rule parked); its later batches apply from now on\n",
		cfg.Node, source, stuck.Seq, rows)
	fmt.Fprintf(stdout, "%s: see them with \"pgcourier conflicts -c %s\"\n", cfg.Node, cfg.File())
	return exitOK
}
